/*
 * The hub's relay (rootless): forwards and host services reach the host's
 * loopback through sockets the host-side process makes in the host's network
 * namespace and passes to the hub (SCM_RIGHTS); the hub splices bytes between
 * them and the tests' connections, on its one epoll loop. Also the host-side
 * process itself.
 */
#define _GNU_SOURCE
#include "uplink-internal.h"
#include "uplink-protocol.h"

#include <netinet/tcp.h>

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define PIPE_SIZE (1 << 18)

struct conn {
  struct side s[2];
  int pipe[2][2];     /* pipe[d]: bytes read from s[d], to be written to s[1-d] */
  size_t queued[2];
  int eof[2], done[2], connecting;
  uint32_t owner;
};
static struct listener *services[64];
static int nservices;
static struct conn *conns[MAX_CONNS];

/*
 * A socket in the host's network namespace, made by the host-side process:
 * one byte asks ('s' stream, 'd' datagram), the answer is the descriptor or
 * an errno. What arrives is checked to be what was asked for.
 */
int host_socket(int type) {
  char c = type == SOCK_DGRAM ? 'd' : 's';
  if (send(factory, &c, 1, 0) != 1) return -1;
  char data;
  char control[CMSG_SPACE(sizeof(int))];
  struct iovec iov = {&data, 1};
  struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control};
  ssize_t n = recvmsg(factory, &mh, MSG_CMSG_CLOEXEC);
  if (n != 1) return -1;
  struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
  if (!cm || cm->cmsg_type != SCM_RIGHTS) {
    errno = (unsigned char)data;
    return -1;
  }
  int fd, got_type = 0, domain = 0;
  memcpy(&fd, CMSG_DATA(cm), sizeof fd);
  socklen_t len = sizeof got_type;
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &got_type, &len) < 0 || got_type != type || (len = sizeof domain, getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len)) < 0 ||
      domain != AF_INET) {
    close(fd);
    errno = EPROTO;
    return -1;
  }
  return fd;
}

void watch(struct item *item, uint32_t events, int op) {
  struct epoll_event ev = {.events = events, .data.ptr = item};
  epoll_ctl(epoll_fd, op, item->fd, &ev);
}

static void conn_close(struct conn *c) {
  for (int d = 0; d < 2; d++) {
    /* Unregister before closing: close() only unregisters once the last reference to the socket
     * goes, and the host-side process may not have dropped its copy of a socket it passed us yet
     * (a connection can end that fast). epoll would then still report events for freed memory. */
    epoll_ctl(epoll_fd, EPOLL_CTL_DEL, c->s[d].item.fd, NULL);
    close(c->s[d].item.fd);
    close(c->pipe[d][0]);
    close(c->pipe[d][1]);
  }
  for (int i = 0; i < MAX_CONNS; i++)
    if (conns[i] == c) conns[i] = NULL;
  free(c);
}

/* Moves what can be moved both ways without blocking, then sets what to wait for. */
static void conn_pump(struct conn *c) {
  if (c->connecting) return;
  for (int progress = 1; progress;) {
    progress = 0;
    for (int d = 0; d < 2; d++) {
      int from = c->s[d].item.fd, to = c->s[1 - d].item.fd;
      if (!c->eof[d] && c->queued[d] < PIPE_SIZE) {
        ssize_t n = splice(from, NULL, c->pipe[d][1], NULL, PIPE_SIZE - c->queued[d], SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (n > 0) c->queued[d] += (size_t)n, progress = 1;
        else if (n == 0) c->eof[d] = 1, progress = 1;
        else if (errno != EAGAIN && errno != EINTR) c->eof[d] = 1, c->done[d] = 1, c->done[1 - d] = 1;
      }
      if (c->queued[d] > 0) {
        ssize_t n = splice(c->pipe[d][0], NULL, to, NULL, c->queued[d], SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (n > 0) c->queued[d] -= (size_t)n, progress = 1;
        else if (n < 0 && errno != EAGAIN && errno != EINTR) c->done[0] = c->done[1] = 1;
      }
      if (c->eof[d] && c->queued[d] == 0 && !c->done[d]) {
        shutdown(to, SHUT_WR); /* pass the half-close on */
        c->done[d] = 1;
      }
    }
  }
  if (c->done[0] && c->done[1]) {
    conn_close(c);
    return;
  }
  for (int d = 0; d < 2; d++) {
    uint32_t events = 0;
    if (!c->eof[d] && c->queued[d] < PIPE_SIZE) events |= EPOLLIN;
    if (c->queued[1 - d] > 0) events |= EPOLLOUT;
    if (events != c->s[d].events) {
      c->s[d].events = events;
      watch(&c->s[d].item, events, EPOLL_CTL_MOD);
    }
  }
}

/* Relays `accepted` to `to_addr:to_port` through `out`, a fresh non-blocking socket. */
static void conn_start(int accepted, int out, uint32_t to_addr, uint16_t to_port, uint32_t owner) {
  int slot = -1;
  for (int i = 0; i < MAX_CONNS && slot < 0; i++)
    if (!conns[i]) slot = i;
  struct conn *c = slot < 0 ? NULL : calloc(1, sizeof *c);
  if (!c || pipe2(c->pipe[0], O_CLOEXEC | O_NONBLOCK) < 0) {
    free(c);
    close(accepted);
    close(out);
    return;
  }
  if (pipe2(c->pipe[1], O_CLOEXEC | O_NONBLOCK) < 0) {
    close(c->pipe[0][0]), close(c->pipe[0][1]), free(c), close(accepted), close(out);
    return;
  }
  fcntl(c->pipe[0][1], F_SETPIPE_SZ, PIPE_SIZE);
  fcntl(c->pipe[1][1], F_SETPIPE_SZ, PIPE_SIZE);
  conns[slot] = c;
  c->owner = owner;
  for (int d = 0; d < 2; d++) {
    c->s[d] = (struct side){{CONN_SIDE, d == 0 ? accepted : out}, c, d};
  }
  int one = 1;
  setsockopt(accepted, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  setsockopt(out, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(to_port), .sin_addr.s_addr = ip_be(to_addr)};
  int r = connect(out, (struct sockaddr *)&to, sizeof to);
  if (r < 0 && errno != EINPROGRESS) {
    struct linger reset = {1, 0}; /* the client sees the refusal at once */
    setsockopt(accepted, SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
    conn_close(c);
    return;
  }
  c->connecting = r < 0;
  c->s[0].events = c->connecting ? 0 : EPOLLIN;
  c->s[1].events = c->connecting ? EPOLLOUT : EPOLLIN;
  watch(&c->s[0].item, c->s[0].events, EPOLL_CTL_ADD);
  watch(&c->s[1].item, c->s[1].events, EPOLL_CTL_ADD);
}

void on_conn_event(struct side *side, uint32_t events) {
  struct conn *c = side->conn;
  if (c->connecting && side->which == 0) {
    if (events & (EPOLLHUP | EPOLLERR)) conn_close(c); /* the client gave up before we got through */
    return;
  }
  if (c->connecting && side->which == 1) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(side->item.fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
      struct linger reset = {1, 0};
      setsockopt(c->s[0].item.fd, SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
      conn_close(c);
      return;
    }
    c->connecting = 0;
  }
  conn_pump(c);
}

void on_accept(struct listener *l) {
  for (int i = 0; i < 64; i++) {
    struct sockaddr_in peer;
    socklen_t len = sizeof peer;
    int fd = accept4(l->item.fd, (struct sockaddr *)&peer, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;
    if (l->item.kind == LISTEN_FORWARD) {
      /* From the host to the test, through the hub's routing. */
      int out = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      if (out < 0) {
        close(fd);
        continue;
      }
      conn_start(fd, out, l->to_addr, l->to_port, l->owner);
    } else {
      /* From a test (its address is the peer: DNAT changed only the destination) to the host's loopback. */
      int out = host_socket(SOCK_STREAM);
      if (out < 0) {
        close(fd);
        continue;
      }
      conn_start(fd, out, 0x7f000001, l->host_port, ntohl(peer.sin_addr.s_addr) >> 2);
    }
  }
}

void close_conns_of(uint32_t id) {
  for (int i = 0; i < MAX_CONNS; i++)
    if (conns[i] && conns[i]->owner == id) conn_close(conns[i]);
}

/* The hub's listener on its loopback for host port `host_port`, shared by all tests. */
struct listener *service_listener(uint16_t host_port, int *err) {
  for (int i = 0; i < nservices; i++)
    if (services[i]->host_port == host_port) return services[i];
  if (nservices == 64) {
    *err = ENOSPC;
    return NULL;
  }
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *err = errno;
    return NULL;
  }
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in at = {.sin_family = AF_INET, .sin_port = htons(host_port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (bind(fd, (struct sockaddr *)&at, sizeof at) < 0) {
    at.sin_port = 0; /* taken in the hub already: any port will do, the DNAT rule names it */
    if (bind(fd, (struct sockaddr *)&at, sizeof at) < 0) {
      *err = errno;
      close(fd);
      return NULL;
    }
  }
  socklen_t len = sizeof at;
  getsockname(fd, (struct sockaddr *)&at, &len);
  if (listen(fd, 128) < 0) {
    *err = errno;
    close(fd);
    return NULL;
  }
  struct listener *l = calloc(1, sizeof *l);
  if (!l) {
    *err = ENOMEM;
    close(fd);
    return NULL;
  }
  *l = (struct listener){{LISTEN_SERVICE, fd}, 0, 0x7f000001, 0, host_port, ntohs(at.sin_port)};
  watch(&l->item, EPOLLIN, EPOLL_CTL_ADD);
  services[nservices++] = l;
  return l;
}

/* Hub: the process that stays in the host's network namespace and makes sockets there. */
int run_host_side(pid_t hub, int channel) {
  signal(SIGPIPE, SIG_IGN);
  for (;;) {
    char c;
    ssize_t n = recv(channel, &c, 1, 0);
    if (n < 0 && errno == EINTR) {
      if (stopping) kill(hub, SIGTERM), stopping = 0;
      continue;
    }
    if (n <= 0) break;
    /* 's' or 'd' only: anything else is answered with EINVAL and no socket. */
    int fd = c == 's' || c == 'd' ? socket(AF_INET, (c == 's' ? SOCK_STREAM : SOCK_DGRAM) | SOCK_NONBLOCK | SOCK_CLOEXEC, 0) : (errno = EINVAL, -1);
    char data = fd < 0 ? (char)errno : 0;
    char control[CMSG_SPACE(sizeof(int))];
    memset(control, 0, sizeof control);
    struct iovec iov = {&data, 1};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    if (fd >= 0) {
      mh.msg_control = control;
      mh.msg_controllen = sizeof control;
      struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
      cm->cmsg_level = SOL_SOCKET;
      cm->cmsg_type = SCM_RIGHTS;
      cm->cmsg_len = CMSG_LEN(sizeof(int));
      memcpy(CMSG_DATA(cm), &fd, sizeof fd);
    }
    sendmsg(channel, &mh, MSG_NOSIGNAL);
    if (fd >= 0) close(fd);
  }
  kill(hub, SIGTERM);
  int status = 0;
  while (waitpid(hub, &status, 0) < 0 && errno == EINTR) {}
  if (WIFSIGNALED(status) && WTERMSIG(status) != SIGTERM) {
    /* The hub never dies of a signal it does not handle unless something is badly wrong: say which. */
    fprintf(stderr, "netns-launch uplink: the hub (pid %d) was killed by signal %d (%s)\n", (int)hub, WTERMSIG(status), strsignal(WTERMSIG(status)));
    return 128 + WTERMSIG(status);
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
