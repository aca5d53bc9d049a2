/*
 * connect-race: run inside a sandbox with a shared port. Tries to get the
 * host's loopback on a port that is NOT shared, the ways a check-then-use
 * window would allow:
 *   - re-connecting a host socket the supervisor installed (connect(AF_UNSPEC)
 *     to disconnect it, then connect to the other port);
 *   - changing the address from another thread while connect() waits for the
 *     supervisor (shared port at check time, the other port after).
 * Prints one line: unspec=<errno> reconnect=<errno> shared=<n> refused=<n> leaked=<n> other=<n>
 * where leaked counts connections answered by the host's unshared service.
 *   connect-race SHARED_PORT UNSHARED_PORT ITERATIONS
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <signal.h>
#include <unistd.h>

static struct sockaddr_in shared_addr, unshared_addr;
static volatile struct sockaddr_in target;
static volatile int stop;

static const char *name(int e) {
  switch (e) {
  case 0: return "0";
  case EISCONN: return "EISCONN";
  case ECONNREFUSED: return "ECONNREFUSED";
  case EINVAL: return "EINVAL";
  case EALREADY: return "EALREADY";
  default: return strerror(e);
  }
}

/* Who answered a connected socket: 'r' (the shared "runtime" service), 'p' (the unshared "private" one), or '?'. */
static char who(int fd) {
  const char req[] = "GET / HTTP/1.0\r\n\r\n";
  if (write(fd, req, sizeof req - 1) < 0) return '?';
  char buf[4096];
  size_t len = 0;
  ssize_t n;
  while (len < sizeof buf - 1 && (n = read(fd, buf + len, sizeof buf - 1 - len)) > 0) len += (size_t)n;
  buf[len] = '\0';
  if (strstr(buf, "\r\n\r\nruntime") || strstr(buf, "\r\n\r\nconfigured")) return 'r'; /* both shared */
  if (strstr(buf, "\r\n\r\nprivate")) return 'p';
  return '?';
}

static void *flip(void *arg) {
  (void)arg;
  while (!stop) {
    memcpy((void *)&target, &unshared_addr, sizeof target);
    memcpy((void *)&target, &shared_addr, sizeof target);
  }
  return NULL;
}

int main(int argc, char **argv) {
  if (argc != 4) return 2;
  int iterations = atoi(argv[3]);
  signal(SIGPIPE, SIG_IGN); /* a reset shows as a failed write, counted as other */
  for (int i = 0; i < 2; i++) {
    struct sockaddr_in *a = i ? &unshared_addr : &shared_addr;
    memset(a, 0, sizeof *a);
    a->sin_family = AF_INET;
    a->sin_port = htons((unsigned short)atoi(argv[1 + i]));
    a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  }
  int s = socket(AF_INET, SOCK_STREAM, 0);
  if (connect(s, (struct sockaddr *)&shared_addr, sizeof shared_addr) < 0) {
    printf("shared connect failed: %s\n", strerror(errno));
    return 1;
  }
  struct sockaddr unspec = {.sa_family = AF_UNSPEC};
  int unspec_err = connect(s, &unspec, sizeof unspec) < 0 ? errno : 0;
  int reconnect_err = connect(s, (struct sockaddr *)&unshared_addr, sizeof unshared_addr) < 0 ? errno : 0;
  if (reconnect_err == 0 && who(s) == 'p') reconnect_err = -1;
  close(s);

  memcpy((void *)&target, &shared_addr, sizeof target); /* never all zeros (AF_UNSPEC) */
  pthread_t thread;
  pthread_create(&thread, NULL, flip, NULL);
  int shared = 0, refused = 0, leaked = 0, other = 0;
  for (int i = 0; i < iterations; i++) {
    int c = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(c, (struct sockaddr *)&target, sizeof target) == 0) {
      char w = who(c);
      if (w == 'r') shared++;
      else if (w == 'p') leaked++;
      else other++;
    } else if (errno == ECONNREFUSED) {
      refused++;
    } else {
      other++;
    }
    close(c);
  }
  stop = 1;
  pthread_join(thread, NULL);
  printf("unspec=%s reconnect=%s shared=%d refused=%d leaked=%d other=%d\n", name(unspec_err),
         reconnect_err < 0 ? "LEAKED" : name(reconnect_err), shared, refused, leaked, other);
  return 0;
}
