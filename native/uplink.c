/*
 * The uplink helper: `netns-launch uplink (--root | --hub) --pool A.B.C.D/N [--state-dir DIR]`.
 *
 * One per Vitest run. It gives a sandbox (a netns-launch process) a veth pair
 * with NAT and port forwards, and takes it away again, on request: one
 * command per line on stdin, one reply per line on stdout, matched by a
 * request number (uplink-protocol.c). A sandbox is named by the number the
 * pool registered it under, never by a pid. Everything is done with netlink
 * from this one process (an `ip` or `nft` process per step costs 10+ ms here).
 *
 *   --root  runs in the host's namespaces (Vitest runs as root). Rules live
 *           in table `ip vitest_netns_uplink_<pid>`, created with the owner
 *           flag: the kernel deletes it when this process's socket closes,
 *           even after SIGKILL.
 *   --hub   (unprivileged) forks. The child becomes the "hub": a new user +
 *           network namespace where it is root; sandboxes started with
 *           `netns-launch --hub <its pid>` are children of its user
 *           namespace, so it may configure them. The parent stays in the
 *           host's network namespace and only makes sockets there, passed to
 *           the hub over a unix socket: the hub relays forwards and host
 *           services to the host's loopback with splice(2) (UDP: datagram
 *           by datagram, uplink-udp.c), without /dev/net/tun.
 *
 * The line protocol is in uplink-protocol.c; the other parts are listed in
 * uplink-internal.h. This file: the run's state, start-up, the main loop.
 */
#define _GNU_SOURCE
#include "uplink.h"
#include "uplink-internal.h"
#include "uplink-protocol.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- state ---- */

int hub_mode;
char nft_table[64];
uint32_t pool_base, pool_prefix;
int nft_fd = -1, rt_fd = -1, own_netns = -1, epoll_fd = -1, factory = -1;
struct stat own_net, host_net, own_user;
uint32_t nl_seq;
const char *state_dir = "/run/vitest-netns";
volatile sig_atomic_t stopping;

/* ---- start-up and the main loop ---- */

static void on_signal(int sig) {
  (void)sig;
  stopping = 1;
}

static void clean_up(void) {
  release_all_forwarding();
  if (!hub_mode && nft_fd >= 0) delete_table(nft_table);
}


static void on_line(char *line) {
  struct uplink_command c;
  if (parse_command(line, &c) == 0) run_command(&c);
}

static int start_failed(const char *step, int err, const char *what) {
  printf("error %s: %s: %s: %s\n", step, errno_name(err), what, strerror(err));
  fflush(stdout);
  return 125;
}

/* Hub: a user + network namespace where this process is root. */
static int become_hub(uid_t uid, gid_t gid) {
  if (unshare(CLONE_NEWUSER | CLONE_NEWNET) < 0) return start_failed("unshare", errno, "user and network namespaces for the hub");
  char map[64];
  write_sysctl("/proc/self/setgroups", "deny");
  snprintf(map, sizeof map, "0 %u 1\n", (unsigned)uid);
  int err = write_sysctl("/proc/self/uid_map", map);
  if (err) return start_failed("uid_map", err, "/proc/self/uid_map");
  snprintf(map, sizeof map, "0 %u 1\n", (unsigned)gid);
  if ((err = write_sysctl("/proc/self/gid_map", map))) return start_failed("gid_map", err, "/proc/self/gid_map");
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  strcpy(ifr.ifr_name, "lo");
  if (s < 0 || ioctl(s, SIOCGIFFLAGS, &ifr) < 0) return start_failed("loopback", errno, "lo");
  ifr.ifr_flags |= IFF_UP;
  if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0) return start_failed("loopback", errno, "lo");
  close(s);
  /* The hub's own namespace, not the host's: it may route between its uplinks and the world. */
  if ((err = write_sysctl("/proc/sys/net/ipv4/ip_forward", "1"))) return start_failed("sysctl", err, "ip_forward in the hub");
  write_sysctl("/proc/sys/net/ipv4/conf/all/route_localnet", "1");
  write_sysctl("/proc/sys/net/ipv4/conf/default/route_localnet", "1");
  return 0;
}

int uplink_main(int argc, char **argv) {
  int root = 0, hub = 0;
  const char *pool = NULL;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--root") == 0) root = 1;
    else if (strcmp(argv[i], "--hub") == 0) hub = 1;
    else if (strcmp(argv[i], "--pool") == 0 && i + 1 < argc) pool = argv[++i];
    else if (strcmp(argv[i], "--state-dir") == 0 && i + 1 < argc) state_dir = argv[++i];
    else root = hub = 1; /* unknown: usage below */
  }
  if (root == hub || !pool || parse_cidr(pool, 0, &pool_base, &pool_prefix) < 0 || pool_prefix > 30) {
    fprintf(stderr, "usage: netns-launch uplink (--root | --hub) --pool A.B.C.D/N [--state-dir DIR]\n");
    return 2;
  }
  hub_mode = hub;
  /* Named apart from sandbox launchers in ps (and in tests looking for a sandbox's relay). */
  prctl(PR_SET_NAME, "netns-uplink", 0, 0, 0);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal; /* no SA_RESTART: a signal wakes the loop */
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGHUP, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);
  pid_t parent = getppid();
  prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0);
  if (getppid() != parent) return 1;
  if (stat("/proc/self/ns/net", &host_net) < 0) return start_failed("netns", errno, "/proc/self/ns/net");

  if (hub) {
    uid_t uid = geteuid();
    gid_t gid = getegid();
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) < 0) return start_failed("socketpair", errno, "host-side channel");
    pid_t child = fork();
    if (child < 0) return start_failed("fork", errno, "the hub");
    if (child > 0) {
      close(pair[1]);
      close(0);
      return run_host_side(child, pair[0]);
    }
    close(pair[0]);
    factory = pair[1];
    prctl(PR_SET_NAME, "netns-hub", 0, 0, 0);
    prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0);
    if (getppid() == 1) return 1;
    int status = become_hub(uid, gid);
    if (status) return status;
    snprintf(nft_table, sizeof nft_table, "vitest_netns_uplink");
  } else {
    if (geteuid() != 0) return start_failed("root", EPERM, "--root needs uid 0");
    snprintf(nft_table, sizeof nft_table, "vitest_netns_uplink_%d", (int)getpid());
    if (mkdir(state_dir, 0755) < 0 && errno != EEXIST) return start_failed("state", errno, state_dir);
  }
  own_netns = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
  if (own_netns < 0 || fstat(own_netns, &own_net) < 0) return start_failed("netns", errno, "/proc/self/ns/net");
  /* Every sandbox of this run has a user namespace that is a child of this one (see register). */
  if (stat("/proc/self/ns/user", &own_user) < 0) return start_failed("userns", errno, "/proc/self/ns/user");
  if ((rt_fd = netlink_socket(NETLINK_ROUTE)) < 0) return start_failed("rtnetlink", errno, "socket");
  if ((nft_fd = netlink_socket(NETLINK_NETFILTER)) < 0) return start_failed("nf_tables", errno, "socket");
  if (!hub) {
    reclaim_forwarding();
    reclaim_tables();
  }
  int err = create_ruleset();
  if (err) return start_failed("nf_tables", err, nft_table);
  if ((epoll_fd = epoll_create1(EPOLL_CLOEXEC)) < 0) return start_failed("epoll", errno, "epoll_create1");
  struct item in = {STDIN, 0};
  fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
  watch(&in, EPOLLIN, EPOLL_CTL_ADD);
  say("ready %d", hub ? (int)getpid() : 0);

  static struct line_reader reader;
  while (!stopping) {
    struct epoll_event events[64];
    int n = epoll_wait(epoll_fd, events, 64, udp_timeout_ms());
    if (n < 0) continue; /* EINTR: a signal; the loop condition decides */
    for (int i = 0; i < n; i++) {
      struct item *item = events[i].data.ptr;
      if (item->kind == STDIN) {
        if (read_lines(0, &reader, on_line) < 0) stopping = 1;
        break; /* a command may have closed connections the rest of this batch names */
      } else if (item->kind == LISTEN_FORWARD || item->kind == LISTEN_SERVICE) {
        on_accept((struct listener *)item);
      } else if (item->kind == UDP_FORWARD || item->kind == UDP_SERVICE) {
        on_udp_listener((struct listener *)item);
        break; /* a new flow may have closed the least recent one, which the rest of this batch may name */
      } else if (item->kind == UDP_FLOW) {
        on_udp_flow(item);
      } else {
        on_conn_event((struct side *)item, events[i].events);
        /* The connection may be gone now; the rest of this batch may name it: start over. */
        break;
      }
    }
    expire_flows();
  }
  clean_up();
  return 0;
}