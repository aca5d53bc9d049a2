/*
 * The connect filter: what lets a sandbox hold sockets of the host's network
 * namespace, and no more than that.
 *  - shared host ports (--share-ports): a TCP connect() in the sandbox to
 *    127.0.0.1, ::1 or ::ffff:127.0.0.1 on a shared port reaches the host's
 *    loopback, for every process of the sandbox (Node, curl, native addons);
 *  - --guard: the filter alone, for sandboxes handed host listeners
 *    (netns.listen()): no host socket is ever connected anew;
 *  - --handover-fd (rootless uplinks): the pool names the test's host
 *    services (a connect to gateway:port gets a host socket) and forwards (a
 *    server's bind() of the port gets a held host listener).
 *
 * Pieces:
 *  - the program installs a seccomp filter before exec that turns connect()
 *    (and, with the hand-over channel, bind()) into a user notification and
 *    refuses io_uring, other ABIs and MSG_FASTOPEN sends, and sends the
 *    listener to init, its ancestor;
 *  - a socket factory, forked by the launcher before unshare(CLONE_NEWNET),
 *    stays in the host's network namespace and hands out fresh TCP sockets
 *    (a socket's namespace is fixed when it is made); init keeps a few spare;
 *  - init (share_supervise) answers every connect() itself. It copies the
 *    target's socket (pidfd_getfd) and reads the address into its own memory,
 *    then:
 *      shared destination, host service, taken-over server: connects a host
 *        socket (bound to an explicit loopback port: bind_locked) to the
 *        checked address, waits for the handshake, installs the connected
 *        socket over the target's descriptor (SECCOMP_IOCTL_NOTIF_ADDFD,
 *        SETFD) and answers 0;
 *      anything else: connects its copy of the target's own socket to the
 *        copied address, and answers with connect's result;
 *      a socket of the host's namespace (SO_NETNS_COOKIE): EISCONN.
 *    A connect is never answered SECCOMP_USER_NOTIF_FLAG_CONTINUE, so the
 *    kernel never re-reads the address or the descriptor after the check.
 *    Binds that take no forward over are (handle_bind says why that is safe).
 * Without shared ports, listeners or rootless uplinks none of this runs.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "share.h"

#ifndef SO_NETNS_COOKIE
#define SO_NETNS_COOKIE 71
#endif
#ifndef SECCOMP_ADDFD_FLAG_SETFD
#define SECCOMP_ADDFD_FLAG_SETFD (1UL << 0)
#endif
/* Linux 6.6: the notifying task and init swap on one CPU instead of a cross-CPU wake-up each way. */
#ifndef SECCOMP_IOCTL_NOTIF_SET_FLAGS
#define SECCOMP_IOCTL_NOTIF_SET_FLAGS SECCOMP_IOW(4, __u64)
#endif
#ifndef SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP
#define SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP (1UL << 0)
#endif

/* The low 32 bits of a syscall argument (both architectures are little-endian): flags are ints. */
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the connect filter reads argument words as little-endian"
#endif
#define ARG_LOW(n) (offsetof(struct seccomp_data, args) + 8 * (n))

#if defined(__x86_64__)
#define SHARE_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define SHARE_ARCH AUDIT_ARCH_AARCH64
#endif

/* Connects in flight at once (blocking connects waiting for their handshake). */
#define MAX_PENDING 256

int share_parse_ports(const char *list, unsigned short *ports) {
  int n = 0;
  const char *p = list;
  while (*p) {
    char *end;
    if (*p < '1' || *p > '9') return -1;
    long v = strtol(p, &end, 10);
    if (v < 1 || v > 65535 || (*end != ',' && *end != '\0') || n == SHARE_MAX_PORTS) return -1;
    for (int i = 0; i < n; i++)
      if (ports[i] == v) return -1;
    ports[n++] = (unsigned short)v;
    p = *end ? end + 1 : end;
  }
  return n;
}

/* --- the factory: fresh sockets of the host's network namespace --- */

static void drop_all_caps(void) {
  prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
  struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
  struct __user_cap_data_struct data[2];
  memset(data, 0, sizeof data);
  if (syscall(SYS_capset, &hdr, data) < 0) _exit(1);
}

/* Serves one byte requests ('4' or '6') with one socket each, until the asker is gone. */
static void run_factory(int sock) {
  for (;;) {
    char domain;
    ssize_t n = recv(sock, &domain, 1, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n != 1) _exit(0);
    int s = -1;
    unsigned char err = EAFNOSUPPORT;
    if (domain == '4' || domain == '6') {
      s = socket(domain == '4' ? AF_INET : AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
      err = s < 0 ? (unsigned char)errno : 0;
    }
    union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } control;
    struct iovec iov = {&err, 1};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    if (s >= 0) {
      msg.msg_control = control.buf;
      msg.msg_controllen = sizeof control.buf;
      struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int));
      memcpy(CMSG_DATA(c), &s, sizeof(int));
    }
    if (sendmsg(sock, &msg, MSG_NOSIGNAL) < 0) _exit(0);
    if (s >= 0) close(s);
  }
}

int share_start_factory(void) {
  int sp[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) < 0) return -1;
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    if (getppid() != parent) _exit(0);
    prctl(PR_SET_NAME, "netns-sockets", 0, 0, 0);
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    for (int fd = 0; fd < 3; fd++) dup2(null, fd);
    if (dup2(sp[1], 3) < 0) _exit(1);
    syscall(SYS_close_range, 4, ~0U, 0);
    drop_all_caps();
    run_factory(3);
  }
  close(sp[1]);
  return sp[0];
}

/*
 * Host sockets are made ahead: a connect handed over then takes a spare one
 * instead of waiting for the factory (a round trip to another process, two
 * context switches). The factory answers requests in order; `asked` is what
 * is pending, the spares are kept per family, at most SPARES each.
 */
#define SPARES 4
#define MAX_ASKED 32
static struct {
  int spare[2][SPARES], nspare[2];
  unsigned char asked[MAX_ASKED]; /* family index (0: AF_INET, 1: AF_INET6) of each pending request */
  int nasked;
  int last_error[2];
} made;

static int family_index(int domain) { return domain == AF_INET ? 0 : 1; }

static int factory_ask(int factory, int family) {
  char req = family == 0 ? '4' : '6';
  if (made.nasked == MAX_ASKED || send(factory, &req, 1, MSG_NOSIGNAL) != 1) return -1;
  made.asked[made.nasked++] = (unsigned char)family;
  return 0;
}

/* Reads the factory's next answer into the spares (or its error). -1 when the factory is gone. */
static int factory_receive(int factory) {
  unsigned char err = 0;
  union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } control;
  struct iovec iov = {&err, 1};
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf, .msg_controllen = sizeof control.buf};
  ssize_t n;
  while ((n = recvmsg(factory, &msg, MSG_CMSG_CLOEXEC)) < 0 && errno == EINTR) {}
  if (n != 1 || made.nasked == 0) return -1;
  int family = made.asked[0];
  memmove(made.asked, made.asked + 1, (size_t)--made.nasked);
  struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
  if (!c || c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS || c->cmsg_len != CMSG_LEN(sizeof(int))) {
    made.last_error[family] = err ? err : ENETDOWN;
    return 0;
  }
  int fd;
  memcpy(&fd, CMSG_DATA(c), sizeof fd);
  if (made.nspare[family] < SPARES) made.spare[family][made.nspare[family]++] = fd;
  else close(fd);
  return 0;
}

static int asked_for(int family) {
  int n = 0;
  for (int i = 0; i < made.nasked; i++) n += made.asked[i] == family;
  return n;
}

/* Asks for what the spares of `family` lack. */
static void factory_top_up(int factory, int family) {
  while (made.nspare[family] + asked_for(family) < SPARES)
    if (factory_ask(factory, family) < 0) return;
}

/* A fresh host socket of `domain`, or -1 with errno. */
static int factory_socket(int factory, int domain) {
  int family = family_index(domain);
  made.last_error[family] = 0;
  if (made.nspare[family] == 0 && asked_for(family) == 0 && factory_ask(factory, family) < 0) {
    errno = ENETDOWN;
    return -1;
  }
  /* Answers come in order: read until one of this family is there (or failed). */
  while (made.nspare[family] == 0) {
    if (made.last_error[family]) {
      errno = made.last_error[family];
      return -1;
    }
    if (factory_receive(factory) < 0) {
      errno = ENETDOWN;
      return -1;
    }
  }
  int fd = made.spare[family][--made.nspare[family]];
  factory_top_up(factory, family);
  return fd;
}

/* --- the filter --- */

#ifdef SHARE_ARCH
/* `with_bind`: bind() is answered by init too (forwards taken over at bind, rootless uplinks). */
static int install_filter(int with_bind) {
  struct sock_filter code[] = {
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SHARE_ARCH, 1, 0),
    /* Another ABI (i386 on x86_64) would have its own connect: none of it. */
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
#ifdef __x86_64__
    BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x40000000, 0, 1), /* x32 */
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
#endif
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_connect, 0, 1),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
    /* Without bind notification the comparison never matches (-1 is no syscall number). */
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, with_bind ? __NR_bind : 0xffffffffu, 0, 1),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
    /*
     * TCP Fast Open connects from sendto/sendmsg (MSG_FASTOPEN), without
     * connect(): on a host socket whose connection ended (TCP_CLOSE again,
     * or a handed-in listener after shutdown()), that would open a new
     * connection in the host's namespace. Refused for every socket.
     */
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_sendto, 3, 0),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_sendmmsg, 2, 0),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_sendmsg, 3, 0),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG_LOW(3)), /* sendto, sendmmsg: flags */
    BPF_JUMP(BPF_JMP | BPF_JA | BPF_K, 1, 0, 0),
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG_LOW(2)), /* sendmsg: flags */
    BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, MSG_FASTOPEN, 0, 1),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EOPNOTSUPP),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog = {sizeof code / sizeof code[0], code};
  return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
}
#else
static int install_filter(int with_bind) {
  (void)with_bind;
  errno = ENOSYS;
  return -1;
}
#endif

void share_install_filter(int to, int with_bind) {
  int listener = install_filter(with_bind);
  if (listener < 0) {
    fprintf(stderr, "netns-launch: share: %s: cannot install the connect filter for shared ports: %s\n",
            errno == ENOSYS ? "ENOSYS" : errno == EINVAL ? "EINVAL" : "E?", strerror(errno));
    _exit(125);
  }
  char byte = 0;
  union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } control;
  struct iovec iov = {&byte, 1};
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf, .msg_controllen = sizeof control.buf};
  struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(c), &listener, sizeof(int));
  if (sendmsg(to, &msg, MSG_NOSIGNAL) != 1) _exit(125);
  /* The program keeps neither: only init answers its connects. */
  close(listener);
  close(to);
}

int share_receive_listener(int from) {
  char byte;
  union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } control;
  struct iovec iov = {&byte, 1};
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf, .msg_controllen = sizeof control.buf};
  ssize_t n;
  while ((n = recvmsg(from, &msg, MSG_CMSG_CLOEXEC)) < 0 && errno == EINTR) {}
  struct cmsghdr *c = n == 1 ? CMSG_FIRSTHDR(&msg) : NULL;
  if (!c || c->cmsg_type != SCM_RIGHTS || c->cmsg_len != CMSG_LEN(sizeof(int))) return -1;
  int fd;
  memcpy(&fd, CMSG_DATA(c), sizeof fd);
  return fd;
}

int share_check_kernel(const char **why) {
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  unsigned long long cookie = 0;
  socklen_t len = sizeof cookie;
  if (s < 0 || getsockopt(s, SOL_SOCKET, SO_NETNS_COOKIE, &cookie, &len) < 0) {
    int e = errno;
    *why = "this kernel lacks SO_NETNS_COOKIE (Linux 5.14)";
    if (s >= 0) close(s);
    return e;
  }
  close(s);
  int listener = install_filter(1);
  if (listener < 0) {
    /* EPERM/EACCES: a filter already in place (a container's profile) refuses new ones. */
    *why = errno == EPERM || errno == EACCES ? "seccomp filters are refused here (a container's seccomp profile?)"
                                             : "this kernel lacks seccomp user notification (Linux 5.0) on this architecture";
    return errno;
  }
  struct seccomp_notif_addfd addfd = {.id = 0, .flags = SECCOMP_ADDFD_FLAG_SETFD, .srcfd = 0, .newfd = 0, .newfd_flags = 0};
  /* No such notification (ENOENT) means the request itself was understood. */
  if (ioctl(listener, SECCOMP_IOCTL_NOTIF_ADDFD, &addfd) == 0 || errno != ENOENT) {
    int e = errno;
    *why = "this kernel lacks SECCOMP_IOCTL_NOTIF_ADDFD with SECCOMP_ADDFD_FLAG_SETFD (Linux 5.14)";
    close(listener);
    return e ? e : EINVAL;
  }
  close(listener);
  return 0;
}

/* --- the supervisor --- */

struct pending {
  __u64 id;
  int fd;          /* in progress: our copy of the target's socket, or a host socket */
  int host;        /* 1: fd is a host socket to install when connected */
  int target_fd;   /* the target's descriptor number */
  int cloexec, nonblock, nodelay, keepalive, target_domain;
  int next, count; /* host: candidate addresses (the one asked for first) */
  int first_error;
  int repicks;     /* local ports picked again for this connect (bind_locked) */
  int hold;        /* -1, or a copy of a taken-over server socket, held until the connect is answered (its port cannot change hands meanwhile) */
  struct sockaddr_storage cand[2];
  socklen_t cand_len[2];
};

static int host_cookie(unsigned long long cookie);

static void release_hold(struct pending *p) {
  if (p->hold >= 0) close(p->hold);
  p->hold = -1;
}

static struct {
  int listener, factory;
  const unsigned short *ports;
  int nports;
  int handover;              /* the pool's hand-over channel (uplink host services), or -1 */
  unsigned long long host;   /* the host's network namespace (where Vitest runs), or 0 when unknown */
  unsigned long long cookie; /* the sandbox's network namespace */
  int own_proc;              /* /proc is the sandbox's (pids in notifications name its files) */
  struct pending pending[MAX_PENDING];
  int npending;
} sv;

static int chld_pipe[2] = {-1, -1};
static void on_chld(int sig) {
  (void)sig;
  int saved = errno;
  if (write(chld_pipe[1], "", 1) < 0) { /* already woken */ }
  errno = saved;
}

static int id_valid(__u64 id) { return ioctl(sv.listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &id) == 0; }

/* Answers a notification: 0, or -error. A target that is gone is no one's concern (ENOENT). */
static void respond(__u64 id, int error) {
  struct seccomp_notif_resp resp;
  memset(&resp, 0, sizeof resp);
  resp.id = id;
  resp.error = error ? -error : 0;
  resp.val = 0;
  if (ioctl(sv.listener, SECCOMP_IOCTL_NOTIF_SEND, &resp) < 0) { /* interrupted or dead: it will ask again or not at all */ }
}

/* An uplink's host service, told by the pool over the hand-over channel: gateway:port -> 127.0.0.1:host_port. */
struct service {
  uint32_t gateway; /* network order */
  unsigned short port, host_port;
};

static struct service services[SHARE_MAX_SERVICES];
static int nservices;

static const struct service *mapped_service(uint32_t gateway, unsigned port) {
  for (int i = 0; i < nservices; i++)
    if (services[i].gateway == gateway && services[i].port == port) return &services[i];
  return NULL;
}

static int shared_port(unsigned port) {
  for (int i = 0; i < sv.nports; i++)
    if (sv.ports[i] == port) return 1;
  return 0;
}

static void v4_loopback(struct sockaddr_storage *ss, socklen_t *len, int domain, unsigned short port_be) {
  memset(ss, 0, sizeof *ss);
  if (domain == AF_INET) {
    struct sockaddr_in *a = (struct sockaddr_in *)ss;
    a->sin_family = AF_INET;
    a->sin_port = port_be;
    a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    *len = sizeof *a;
  } else { /* keeps an AF_INET6 socket AF_INET6: ::ffff:127.0.0.1 */
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
    a->sin6_family = AF_INET6;
    a->sin6_port = port_be;
    a->sin6_addr.s6_addr[10] = a->sin6_addr.s6_addr[11] = 0xff;
    a->sin6_addr.s6_addr[12] = 127;
    a->sin6_addr.s6_addr[15] = 1;
    *len = sizeof *a;
  }
}

static void v6_loopback(struct sockaddr_storage *ss, socklen_t *len, unsigned short port_be) {
  memset(ss, 0, sizeof *ss);
  struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
  a->sin6_family = AF_INET6;
  a->sin6_port = port_be;
  a->sin6_addr = in6addr_loopback;
  *len = sizeof *a;
}

static int takeover_destination(int v4, uint32_t v4_addr, unsigned port, struct pending *p, unsigned short *host_port);
/* `only`: that socket inode alone (not copied otherwise), or 0 for all. */
static int scan_sockets(int (*visit)(int copy, unsigned long inode, pid_t pid, int fd, void *arg), void *arg, unsigned long only);

/*
 * Whether `addr` (as the target gave it, for a socket of `domain`) is a shared
 * port on loopback; if so, fills p's candidate host addresses: the family
 * asked for first, then the other one (the host's service may listen on
 * either 127.0.0.1 or ::1).
 */
static int shared_destination(const struct sockaddr_storage *addr, socklen_t len, int domain, struct pending *p) {
  int v4;
  unsigned short port_be;
  uint32_t v4_addr = 0; /* network order, when v4 */
  if (domain == AF_INET && addr->ss_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)addr;
    v4 = 1;
    v4_addr = a->sin_addr.s_addr;
    port_be = a->sin_port;
  } else if (domain == AF_INET6 && addr->ss_family == AF_INET6 && len >= 24 /* SIN6_LEN_RFC2133 */) {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)addr;
    static const unsigned char mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    v4 = memcmp(&a->sin6_addr, mapped_prefix, 12) == 0;
    if (v4) memcpy(&v4_addr, &a->sin6_addr.s6_addr[12], 4);
    else if (!IN6_IS_ADDR_LOOPBACK(&a->sin6_addr)) return 0;
    port_be = a->sin6_port;
  } else {
    return 0;
  }
  /* A server of the sandbox whose socket was taken over at bind: it listens on the host's loopback now. */
  unsigned short host_port;
  if (takeover_destination(v4, v4_addr, ntohs(port_be), p, &host_port)) {
    /* count 0 (not listening yet): connect_host answers ECONNREFUSED. */
    if (p->count == 0) return 1;
    v4_loopback(&p->cand[0], &p->cand_len[0], domain, htons(host_port));
    return 1;
  }
  /* An uplink's host service (rootless): the gateway's port is the host's loopback port it serves. */
  const struct service *service = v4 ? mapped_service(v4_addr, ntohs(port_be)) : NULL;
  if (service) {
    p->count = 1;
    v4_loopback(&p->cand[0], &p->cand_len[0], domain, htons(service->host_port));
    return 1;
  }
  if (v4 && v4_addr != htonl(INADDR_LOOPBACK)) return 0;
  if (!shared_port(ntohs(port_be))) return 0;
  p->count = 2;
  if (v4) {
    v4_loopback(&p->cand[0], &p->cand_len[0], domain, port_be);
    v6_loopback(&p->cand[1], &p->cand_len[1], port_be);
  } else {
    v6_loopback(&p->cand[0], &p->cand_len[0], port_be);
    v4_loopback(&p->cand[1], &p->cand_len[1], domain, port_be);
  }
  return 1;
}

/* Whether the target's descriptor has FD_CLOEXEC, from its fdinfo; sockets opened by libuv, Python and Go do. */
static int target_cloexec(pid_t pid, int fd) {
  if (!sv.own_proc) return 1;
  char path[64], buf[256];
  snprintf(path, sizeof path, "/proc/%d/fdinfo/%d", (int)pid, fd);
  int f = open(path, O_RDONLY | O_CLOEXEC);
  if (f < 0) return 1;
  ssize_t n = read(f, buf, sizeof buf - 1);
  close(f);
  if (n <= 0) return 1;
  buf[n] = '\0';
  char *flags = strstr(buf, "flags:");
  return flags ? (strtoul(flags + 6, NULL, 8) & O_CLOEXEC) != 0 : 1;
}

/* Installs the connected host socket over the target's descriptor and answers 0. Closes `fd`. */
static void install(struct pending *p, int fd) {
  fcntl(fd, F_SETFL, p->nonblock ? O_NONBLOCK : 0);
  struct seccomp_notif_addfd addfd = {
    .id = p->id, .flags = SECCOMP_ADDFD_FLAG_SETFD, .srcfd = (__u32)fd, .newfd = (__u32)p->target_fd,
    .newfd_flags = p->cloexec ? O_CLOEXEC : 0,
  };
  /*
   * Not SECCOMP_ADDFD_FLAG_SEND: that answers with the new descriptor's number, and connect() must return 0.
   * The socket is connected already, so the moment between the two calls gives the target nothing new.
   */
  if (ioctl(sv.listener, SECCOMP_IOCTL_NOTIF_ADDFD, &addfd) >= 0) respond(p->id, 0);
  close(fd);
}

/*
 * Binds a host socket to the loopback address of `to`'s family (127.0.0.1,
 * ::ffff:127.0.0.1 or ::1) on an explicit port: `port`, or when 0 one picked
 * here from the ephemeral range. Why not port 0: a port the kernel assigns is
 * given back when the socket returns to TCP_CLOSE (a connection that ended, a
 * listener after shutdown()), and an unbound host socket could then be bound
 * anew, to any address of the host. An explicit port and address are locked
 * (SOCK_BINDPORT_LOCK, SOCK_BINDADDR_LOCK): the socket stays bound to them for
 * good, so bind() on it can only fail. 0, or an errno.
 */
static int bind_locked(int fd, const struct sockaddr_storage *to, unsigned port) {
  struct sockaddr_storage at;
  socklen_t len;
  if (to->ss_family == AF_INET) {
    v4_loopback(&at, &len, AF_INET, 0);
  } else if (memcmp(&((const struct sockaddr_in6 *)to)->sin6_addr, "\0\0\0\0\0\0\0\0\0\0\xff\xff", 12) == 0) {
    v4_loopback(&at, &len, AF_INET6, 0);
  } else {
    v6_loopback(&at, &len, 0);
  }
  /*
   * SO_REUSEADDR: a port whose last connections wait in TIME_WAIT is free for
   * this bind too (connect's own port choice reuses those as well); a port a
   * listener or a socket without it holds is not.
   */
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  static unsigned seed;
  if (!seed) seed = (unsigned)getpid() * 2654435761u ^ (unsigned)time(NULL);
  for (int tries = 0; tries < 64; tries++) {
    unsigned pick = port;
    if (!pick) {
      seed ^= seed << 13, seed ^= seed >> 17, seed ^= seed << 5;
      pick = 32768 + seed % (60999 - 32768 + 1);
    }
    unsigned short be = htons((unsigned short)pick);
    if (at.ss_family == AF_INET) ((struct sockaddr_in *)&at)->sin_port = be;
    else ((struct sockaddr_in6 *)&at)->sin6_port = be;
    if (bind(fd, (struct sockaddr *)&at, len) == 0) return 0;
    if (errno != EADDRINUSE || port) return errno;
  }
  return EADDRNOTAVAIL;
}

/*
 * Tries p's candidate addresses from p->next on, each with a fresh host
 * socket. Returns 1 while a connect is in flight (p->fd), 0 when answered.
 */
static int connect_host(struct pending *p) {
  while (p->next < p->count) {
    struct sockaddr_storage *addr = &p->cand[p->next];
    int fd = factory_socket(sv.factory, addr->ss_family);
    int err;
    if (fd < 0) {
      err = errno;
    } else {
      fcntl(fd, F_SETFL, O_NONBLOCK);
      int one = 1;
      if (p->nodelay) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      if (p->keepalive) setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
      if ((err = bind_locked(fd, addr, 0)) != 0) {
        close(fd);
        if (p->next == 0) p->first_error = err;
        p->next++;
        continue;
      }
      if (connect(fd, (struct sockaddr *)addr, p->cand_len[p->next]) == 0) {
        install(p, fd);
        return 0;
      }
      err = errno;
      /* The port picked makes a connection that still exists (EADDRNOTAVAIL): another pick. */
      if (err == EADDRNOTAVAIL && ++p->repicks <= 8) {
        close(fd);
        continue;
      }
      if (err == EINPROGRESS) {
        p->fd = fd;
        return 1;
      }
      close(fd);
    }
    if (p->next == 0) p->first_error = err;
    p->next++;
  }
  respond(p->id, p->first_error ? p->first_error : ECONNREFUSED);
  return 0;
}

/* A connect in flight finished (writable or failed). Returns 1 if p is still in flight. */
static int finish(struct pending *p) {
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(p->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
  if (!p->host) {
    respond(p->id, err);
    close(p->fd);
    return 0;
  }
  if (!err) {
    install(p, p->fd);
    return 0;
  }
  close(p->fd);
  if (p->next == 0) p->first_error = err;
  p->next++;
  return connect_host(p);
}

/*
 * A connect that is not to a shared port: our copy of the target's own socket
 * (in the sandbox's namespace) is connected to the copied address, here, so
 * nothing is re-read. AF_UNIX paths resolve from the target's working directory.
 */
static int connect_own(struct pending *p, pid_t pid, int copy, const struct sockaddr_storage *addr, socklen_t len, int flags) {
  int cwd = -1, here = -1;
  if (addr->ss_family == AF_UNIX && len > offsetof(struct sockaddr_un, sun_path)) {
    const char *path = ((const struct sockaddr_un *)addr)->sun_path;
    if (path[0] != '/' && path[0] != '\0' && sv.own_proc) {
      char where[64];
      snprintf(where, sizeof where, "/proc/%d/cwd", (int)pid);
      cwd = open(where, O_PATH | O_DIRECTORY | O_CLOEXEC);
      here = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
      if (cwd >= 0 && here >= 0 && fchdir(cwd) == 0) { /* resolved from there */ }
    }
  }
  int blocking = !(flags & O_NONBLOCK);
  /* The description is the target's: O_NONBLOCK only for the call, so init never waits in connect(). */
  if (blocking) fcntl(copy, F_SETFL, flags | O_NONBLOCK);
  int r = connect(copy, (const struct sockaddr *)addr, len);
  int err = r == 0 ? 0 : errno;
  if (blocking) fcntl(copy, F_SETFL, flags);
  if (here >= 0) {
    if (fchdir(here) < 0) { /* init's directory is / anyway */ }
    close(here);
  }
  if (cwd >= 0) close(cwd);
  /* A blocking connect waits for its handshake, as the kernel would have (EALREADY: asked again after a signal). */
  if (blocking && (err == EINPROGRESS || err == EALREADY)) {
    p->fd = copy;
    p->host = 0;
    return 1;
  }
  respond(p->id, err);
  close(copy);
  return 0;
}

#ifndef PIDFD_THREAD
#define PIDFD_THREAD O_EXCL
#endif

/*
 * A pidfd for the task that called connect(): often not the thread group's
 * leader (glibc's resolver, libuv's threads). Linux 6.9 opens a thread's
 * pidfd (PIDFD_THREAD); before, its thread group's, which shares its descriptors.
 */
static int target_pidfd(pid_t tid) {
  int fd = (int)syscall(SYS_pidfd_open, tid, PIDFD_THREAD);
  if (fd >= 0 || errno != EINVAL) return fd;
  fd = (int)syscall(SYS_pidfd_open, tid, 0);
  if (fd >= 0 || errno != EINVAL || !sv.own_proc) return fd;
  char path[64], buf[512];
  snprintf(path, sizeof path, "/proc/%d/status", (int)tid);
  int f = open(path, O_RDONLY | O_CLOEXEC);
  if (f < 0) return -1;
  ssize_t n = read(f, buf, sizeof buf - 1);
  close(f);
  if (n <= 0) return -1;
  buf[n] = '\0';
  char *tgid = strstr(buf, "\nTgid:");
  return tgid ? (int)syscall(SYS_pidfd_open, (pid_t)strtol(tgid + 6, NULL, 10), 0) : -1;
}

static int sockopt_int(int fd, int level, int name) {
  int v = 0;
  socklen_t len = sizeof v;
  return getsockopt(fd, level, name, &v, &len) < 0 ? -1 : v;
}

/*
 * A forward taken over at bind (rootless uplinks): the pool asked for it
 * before the test's server bound its port, so init holds a host socket bound
 * to 127.0.0.1:host_port, and the server's bind() of that port (on the
 * wildcard or the uplink's address) gets that socket in place of its own.
 * Its listen() then listens on the host's loopback: host clients reach the
 * server with no relay in between.
 */
struct forward {
  unsigned short port, host_port;
  uint32_t address; /* the sandbox's uplink address, network order */
  int fd;           /* the held host socket */
};

static struct forward forwards[SHARE_MAX_SERVICES];
static int nforwards;

/*
 * A server socket taken over at bind. The sandbox's own clients reach it at
 * its port on 127.0.0.1, ::1 or the uplink's address, as they would have
 * before: their connects get host sockets connected to 127.0.0.1:host_port.
 * Only while the server still holds it: each such connect first finds the
 * socket in the sandbox (by inode) and holds a copy until the connect is
 * answered, so the port cannot be some other host program's by then.
 */
struct takeover {
  unsigned short port, host_port;
  uint32_t address;
  unsigned long inode;
  pid_t pid; /* where it was last seen */
  int fd;
};

static struct takeover takeovers[SHARE_MAX_SERVICES];
static int ntakeovers;

static int is_inode(int copy, unsigned long inode, pid_t pid, int fd, void *arg) {
  (void)copy;
  struct takeover *t = arg;
  if (inode != t->inode) return 0;
  t->pid = pid;
  t->fd = fd;
  return 1;
}

/* A copy of the taken-over socket while a sandbox process holds it, else -1. */
static int takeover_copy(struct takeover *t) {
  int copy = -1;
  char link[64], target[64];
  snprintf(link, sizeof link, "/proc/%d/fd/%d", (int)t->pid, t->fd);
  ssize_t n = readlink(link, target, sizeof target - 1);
  if (n > 8) {
    target[n] = '\0';
    int pidfd = strncmp(target, "socket:[", 8) == 0 && strtoul(target + 8, NULL, 10) == t->inode ? (int)syscall(SYS_pidfd_open, t->pid, 0) : -1;
    if (pidfd >= 0) {
      copy = (int)syscall(SYS_pidfd_getfd, pidfd, t->fd, 0);
      close(pidfd);
    }
  }
  struct stat st;
  if (copy >= 0 && (fstat(copy, &st) < 0 || st.st_ino != t->inode)) {
    close(copy);
    copy = -1;
  }
  if (copy < 0) copy = scan_sockets(is_inode, t, t->inode); /* moved (dup2, passed to a child) or gone */
  return copy;
}

static int takeover_destination(int v4, uint32_t v4_addr, unsigned port, struct pending *p, unsigned short *host_port) {
  for (int i = 0; i < ntakeovers; i++) {
    struct takeover *t = &takeovers[i];
    if (t->port != port || (v4 && v4_addr != htonl(INADDR_LOOPBACK) && v4_addr != t->address)) continue;
    int copy = takeover_copy(t);
    if (copy < 0) { /* the server closed it: its port is the sandbox's own again */
      takeovers[i--] = takeovers[--ntakeovers];
      continue;
    }
    /* Still where it was taken over (it cannot move: bind_locked), so the connect reaches this server. */
    struct sockaddr_in bound;
    socklen_t bound_len = sizeof bound;
    if (getsockname(copy, (struct sockaddr *)&bound, &bound_len) < 0 || bound.sin_family != AF_INET ||
        bound.sin_addr.s_addr != htonl(INADDR_LOOPBACK) || ntohs(bound.sin_port) != t->host_port) {
      close(copy);
      takeovers[i--] = takeovers[--ntakeovers];
      continue;
    }
    /* Bound, not listening yet (between the server's bind and listen): refused, as it would be. */
    if (sockopt_int(copy, SOL_SOCKET, SO_ACCEPTCONN) != 1) {
      close(copy);
      p->count = 0;
      return 1;
    }
    p->hold = copy;
    p->count = 1;
    *host_port = t->host_port;
    return 1;
  }
  return 0;
}

static void respond_continue(__u64 id) {
  struct seccomp_notif_resp resp;
  memset(&resp, 0, sizeof resp);
  resp.id = id;
  resp.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
  if (ioctl(sv.listener, SECCOMP_IOCTL_NOTIF_SEND, &resp) < 0) { /* gone */ }
}

/* The forward whose bind this is (a wildcard or the uplink's address, its port), or -1. */
static int forward_for(const struct sockaddr_storage *addr, socklen_t len, int domain) {
  uint32_t a4;
  unsigned port;
  if (domain == AF_INET && addr->ss_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)addr;
    a4 = a->sin_addr.s_addr;
    port = ntohs(a->sin_port);
  } else if (domain == AF_INET6 && addr->ss_family == AF_INET6 && len >= 24) {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)addr;
    static const unsigned char mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (IN6_IS_ADDR_UNSPECIFIED(&a->sin6_addr)) a4 = 0;
    else if (memcmp(&a->sin6_addr, mapped_prefix, 12) == 0) memcpy(&a4, &a->sin6_addr.s6_addr[12], 4);
    else return -1;
    port = ntohs(a->sin6_port);
  } else {
    return -1;
  }
  for (int i = 0; i < nforwards; i++)
    if (forwards[i].port == port && (a4 == 0 || a4 == forwards[i].address)) return i;
  return -1;
}

/*
 * One bind() notification. Only a fresh TCP socket of the sandbox binding a
 * forward's port is answered here (with the held host socket); every other
 * bind goes on as asked (CONTINUE). That is safe although the kernel reads
 * the arguments again: every host socket a sandbox can hold is bound already
 * (listeners, connected sockets), so a bind swapped onto one fails (EINVAL),
 * and a bind of a sandbox socket only ever binds in the sandbox's namespace.
 */
static void handle_bind(struct seccomp_notif *req) {
  if (nforwards == 0) return respond_continue(req->id);
  int target_fd = (int)req->data.args[0];
  long long len = (long long)(int)req->data.args[2];
  if (len <= 0 || len > (long long)sizeof(struct sockaddr_storage)) return respond_continue(req->id);
  int pidfd = target_pidfd(req->pid);
  if (pidfd < 0) return respond_continue(req->id);
  if (!id_valid(req->id)) {
    close(pidfd);
    return;
  }
  int copy = (int)syscall(SYS_pidfd_getfd, pidfd, target_fd, 0);
  close(pidfd);
  if (copy < 0) return respond_continue(req->id);
  struct sockaddr_storage addr;
  memset(&addr, 0, sizeof addr);
  struct iovec local = {&addr, (size_t)len}, far = {(void *)(uintptr_t)req->data.args[1], (size_t)len};
  unsigned long long cookie = 0;
  socklen_t cookie_len = sizeof cookie;
  struct sockaddr_storage bound;
  socklen_t bound_len = sizeof bound;
  int domain = sockopt_int(copy, SOL_SOCKET, SO_DOMAIN);
  int i = -1;
  if (syscall(SYS_process_vm_readv, req->pid, &local, 1, &far, 1, 0) == len && id_valid(req->id) &&
      getsockopt(copy, SOL_SOCKET, SO_NETNS_COOKIE, &cookie, &cookie_len) == 0 && cookie == sv.cookie &&
      sockopt_int(copy, SOL_SOCKET, SO_TYPE) == SOCK_STREAM && sockopt_int(copy, SOL_SOCKET, SO_PROTOCOL) == IPPROTO_TCP &&
      getsockname(copy, (struct sockaddr *)&bound, &bound_len) == 0 &&
      (bound.ss_family == AF_INET ? ((struct sockaddr_in *)&bound)->sin_port : ((struct sockaddr_in6 *)&bound)->sin6_port) == 0)
    i = forward_for(&addr, (socklen_t)len, domain);
  if (i < 0) {
    close(copy);
    return respond_continue(req->id);
  }
  struct pending p;
  memset(&p, 0, sizeof p);
  p.id = req->id;
  p.target_fd = target_fd;
  int flags = fcntl(copy, F_GETFL);
  p.nonblock = flags >= 0 && (flags & O_NONBLOCK);
  p.cloexec = target_cloexec(req->pid, target_fd);
  close(copy);
  /* One server per forward: the socket is the sandbox's now (install closes our descriptor). */
  struct forward f = forwards[i];
  forwards[i] = forwards[--nforwards];
  struct stat st;
  if (fstat(f.fd, &st) == 0 && ntakeovers < SHARE_MAX_SERVICES) {
    /* Replaces a gone server's entry for the same port, if any. */
    for (int k = 0; k < ntakeovers; k++)
      if (takeovers[k].port == f.port) takeovers[k--] = takeovers[--ntakeovers];
    takeovers[ntakeovers++] = (struct takeover){f.port, f.host_port, f.address, (unsigned long)st.st_ino, req->pid, target_fd};
  }
  p.hold = -1;
  install(&p, f.fd);
}

/* Whether something in the sandbox listens on TCP `port` already (its /proc/net/tcp and tcp6). */
static int listening_here(unsigned port) {
  static const char *const tables[] = {"/proc/net/tcp", "/proc/net/tcp6"};
  for (int t = 0; t < 2; t++) {
    FILE *f = fopen(tables[t], "re");
    if (!f) continue;
    char line[512];
    while (fgets(line, sizeof line, f)) {
      char local[64];
      unsigned state;
      /* "  0: 0100007F:1F90 00000000:0000 0A ..." */
      if (sscanf(line, " %*d: %63s %*s %x", local, &state) != 2 || state != 0x0A) continue;
      char *colon = strrchr(local, ':');
      if (colon && strtoul(colon + 1, NULL, 16) == port) {
        fclose(f);
        return 1;
      }
    }
    fclose(f);
  }
  return 0;
}

/* "forward PORT HOST_PORT ADDRESS": holds a host socket for the server's bind. Writes the answer. */
static void forward_command(unsigned port, unsigned host_port, uint32_t address, char *answer, size_t size) {
  for (int i = 0; i < nforwards; i++)
    if (forwards[i].port == port) {
      snprintf(answer, size, "error EEXIST");
      return;
    }
  if (nforwards == SHARE_MAX_SERVICES) {
    snprintf(answer, size, "error ENOSPC");
    return;
  }
  /* A server that took an earlier forward over at bind is still reached at its host port. */
  for (int i = 0; i < ntakeovers; i++) {
    if (takeovers[i].port != port) continue;
    int copy = takeover_copy(&takeovers[i]);
    if (copy < 0) {
      takeovers[i--] = takeovers[--ntakeovers];
      continue;
    }
    close(copy);
    if (host_port && host_port != takeovers[i].host_port) snprintf(answer, size, "error EBUSY %u", (unsigned)takeovers[i].host_port);
    else snprintf(answer, size, "ok %u", (unsigned)takeovers[i].host_port);
    return;
  }
  /* The server is up already: the relay carries this forward (the pool asks the hub). */
  if (listening_here(port)) {
    snprintf(answer, size, "listening");
    return;
  }
  int fd = sv.factory >= 0 ? factory_socket(sv.factory, AF_INET) : -1;
  if (fd < 0) {
    snprintf(answer, size, "error %s", errno == EMFILE ? "EMFILE" : "ENETDOWN");
    return;
  }
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in at = {.sin_family = AF_INET};
  socklen_t len = sizeof at;
  int e = bind_locked(fd, (struct sockaddr_storage *)&at, host_port);
  if (e || getsockname(fd, (struct sockaddr *)&at, &len) < 0) {
    if (!e) e = errno;
    close(fd);
    snprintf(answer, size, "error %s", e == EADDRINUSE ? "EADDRINUSE" : e == EACCES ? "EACCES" : "EINVAL");
    return;
  }
  forwards[nforwards++] = (struct forward){(unsigned short)port, ntohs(at.sin_port), address, fd};
  snprintf(answer, size, "ok %u", (unsigned)ntohs(at.sin_port));
}

/* The uplink is down: forwards whose server never bound give their host ports back. */
static void drop_forwards(void) {
  for (int i = 0; i < nforwards; i++) close(forwards[i].fd);
  nforwards = 0;
}

/* One connect() notification. Returns 1 if it left a connect in flight in *p. */
static int handle(struct pending *p) {
  struct seccomp_notif req;
  memset(&req, 0, sizeof req);
  if (ioctl(sv.listener, SECCOMP_IOCTL_NOTIF_RECV, &req) < 0) return 0;
  memset(p, 0, sizeof *p);
  p->id = req.id;
  p->fd = -1;
  p->hold = -1;
  if (req.data.nr == __NR_bind) {
    handle_bind(&req);
    return 0;
  }
  if (req.data.nr != __NR_connect) {
    respond(req.id, ENOSYS);
    return 0;
  }
  int target_fd = (int)req.data.args[0];
  __u64 remote = req.data.args[1];
  long long len = (long long)(int)req.data.args[2];
  int pidfd = target_pidfd(req.pid);
  if (pidfd < 0) {
    respond(req.id, ESRCH); /* gone, most likely: then no one hears it */
    return 0;
  }
  /* The pid named the notifying task when the pidfd was made (not a reused pid). */
  if (!id_valid(req.id)) {
    close(pidfd);
    return 0;
  }
  int copy = (int)syscall(SYS_pidfd_getfd, pidfd, target_fd, 0);
  int getfd_error = errno;
  close(pidfd);
  if (copy < 0) {
    respond(req.id, getfd_error == EBADF ? EBADF : getfd_error);
    return 0;
  }
  struct stat st;
  if (fstat(copy, &st) < 0 || !S_ISSOCK(st.st_mode)) {
    close(copy);
    respond(req.id, ENOTSOCK);
    return 0;
  }
  if (len < 0 || len > (long long)sizeof(struct sockaddr_storage)) {
    close(copy);
    respond(req.id, EINVAL);
    return 0;
  }
  struct sockaddr_storage addr;
  memset(&addr, 0, sizeof addr);
  struct iovec local = {&addr, (size_t)len}, far = {(void *)(uintptr_t)remote, (size_t)len};
  if (len > 0 && syscall(SYS_process_vm_readv, req.pid, &local, 1, &far, 1, 0) != len) {
    close(copy);
    respond(req.id, EFAULT);
    return 0;
  }
  /* What was read is the notifying task's (it is still waiting in this connect). */
  if (!id_valid(req.id)) {
    close(copy);
    return 0;
  }
  unsigned long long cookie = 0;
  socklen_t cookie_len = sizeof cookie;
  if (getsockopt(copy, SOL_SOCKET, SO_NETNS_COOKIE, &cookie, &cookie_len) < 0 || host_cookie(cookie)) {
    /* A host socket (one init installed, a listener handed in): it is never connected anew. */
    close(copy);
    respond(req.id, EISCONN);
    return 0;
  }
  /* A socket of a network namespace the sandbox made itself (unshare -n): connected there, nothing handed over. */
  if (cookie != sv.cookie) {
    int own_flags = fcntl(copy, F_GETFL);
    return connect_own(p, req.pid, copy, &addr, (socklen_t)len, own_flags < 0 ? 0 : own_flags);
  }
  int domain = sockopt_int(copy, SOL_SOCKET, SO_DOMAIN);
  int type = sockopt_int(copy, SOL_SOCKET, SO_TYPE);
  int protocol = sockopt_int(copy, SOL_SOCKET, SO_PROTOCOL);
  int flags = fcntl(copy, F_GETFL);
  if (flags < 0) flags = 0;
  p->target_fd = target_fd;
  if ((domain == AF_INET || domain == AF_INET6) && type == SOCK_STREAM && protocol == IPPROTO_TCP &&
      shared_destination(&addr, (socklen_t)len, domain, p)) {
    struct sockaddr_storage peer;
    socklen_t peer_len = sizeof peer;
    if (getpeername(copy, (struct sockaddr *)&peer, &peer_len) == 0) {
      close(copy);
      release_hold(p);
      respond(req.id, EISCONN);
      return 0;
    }
    p->nonblock = (flags & O_NONBLOCK) != 0;
    p->nodelay = sockopt_int(copy, IPPROTO_TCP, TCP_NODELAY) > 0;
    p->keepalive = sockopt_int(copy, SOL_SOCKET, SO_KEEPALIVE) > 0;
    p->target_domain = domain;
    p->cloexec = target_cloexec(req.pid, target_fd);
    p->host = 1;
    close(copy);
    int waiting = connect_host(p);
    if (!waiting) release_hold(p);
    return waiting;
  }
  return connect_own(p, req.pid, copy, &addr, (socklen_t)len, flags);
}

/* Whether a socket of that namespace is the host's: known exactly, or else anything not the sandbox's own. */
static int host_cookie(unsigned long long cookie) {
  return sv.host ? cookie == sv.host : cookie != sv.cookie;
}

static unsigned long long own_cookie(void) {
  unsigned long long cookie = 0;
  socklen_t len = sizeof cookie;
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s >= 0 && getsockopt(s, SOL_SOCKET, SO_NETNS_COOKIE, &cookie, &len) < 0) cookie = 0;
  if (s >= 0) close(s);
  return cookie;
}

/* Plain decimal 1..65535, the whole token. */
static int parse_port(const char *s) {
  if (*s < '1' || *s > '9' || strlen(s) > 5) return -1;
  for (const char *c = s; *c; c++)
    if (*c < '0' || *c > '9') return -1;
  long v = strtol(s, NULL, 10);
  return v <= 65535 ? (int)v : -1;
}

/* Whether a host socket is connected to one of the services (not a shared port): then it came from the hand-over. */
static int service_connection(int fd) {
  struct sockaddr_storage peer;
  socklen_t len = sizeof peer;
  if (getpeername(fd, (struct sockaddr *)&peer, &len) < 0) return 0;
  unsigned port;
  if (peer.ss_family == AF_INET) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)&peer;
    if (a->sin_addr.s_addr != htonl(INADDR_LOOPBACK)) return 0;
    port = ntohs(a->sin_port);
  } else if (peer.ss_family == AF_INET6) {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&peer;
    static const unsigned char mapped[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1};
    if (memcmp(&a->sin6_addr, mapped, 16) != 0) return 0;
    port = ntohs(a->sin6_port);
  } else {
    return 0;
  }
  if (shared_port(port)) return 0;
  for (int i = 0; i < nservices; i++)
    if (services[i].host_port == port) return 1;
  return 0;
}

/*
 * Visits every socket held by a process of the sandbox (its /proc), once
 * each, through a copy (pidfd_getfd). `visit` returns 1 to stop and keep the
 * copy, which is then returned; otherwise the copy is closed. -1: none kept.
 */
static int scan_sockets(int (*visit)(int copy, unsigned long inode, pid_t pid, int fd, void *arg), void *arg, unsigned long only) {
  if (!sv.own_proc) return -1;
  DIR *proc = opendir("/proc");
  if (!proc) return -1;
  static unsigned long seen[4096];
  int nseen = 0, kept = -1;
  struct dirent *p;
  while (kept < 0 && (p = readdir(proc))) {
    char *end;
    long pid = strtol(p->d_name, &end, 10);
    if (*end || pid <= 1) continue;
    int pidfd = (int)syscall(SYS_pidfd_open, (pid_t)pid, 0);
    if (pidfd < 0) continue;
    char path[64];
    snprintf(path, sizeof path, "/proc/%ld/fd", pid);
    DIR *fds = opendir(path);
    struct dirent *f;
    while (kept < 0 && fds && (f = readdir(fds))) {
      long fd = strtol(f->d_name, &end, 10);
      char link[64], target[64];
      if (*end || fd < 0) continue;
      snprintf(link, sizeof link, "/proc/%ld/fd/%ld", pid, fd);
      ssize_t n = readlink(link, target, sizeof target - 1);
      if (n <= 8) continue;
      target[n] = '\0';
      if (strncmp(target, "socket:[", 8) != 0) continue;
      unsigned long inode = strtoul(target + 8, NULL, 10);
      if (only && inode != only) continue;
      int known = 0;
      for (int i = 0; i < nseen && !known; i++) known = seen[i] == inode;
      if (known) continue;
      if (nseen < (int)(sizeof seen / sizeof seen[0])) seen[nseen++] = inode;
      int copy = (int)syscall(SYS_pidfd_getfd, pidfd, (int)fd, 0);
      if (copy < 0) continue;
      if (visit(copy, inode, (pid_t)pid, (int)fd, arg)) kept = copy;
      else close(copy);
    }
    if (fds) closedir(fds);
    close(pidfd);
  }
  closedir(proc);
  return kept;
}

static int cut_if_service(int copy, unsigned long inode, pid_t pid, int fd, void *arg) {
  (void)inode, (void)pid, (void)fd, (void)arg;
  unsigned long long cookie = 0;
  socklen_t cookie_len = sizeof cookie;
  if (getsockopt(copy, SOL_SOCKET, SO_NETNS_COOKIE, &cookie, &cookie_len) == 0 && host_cookie(cookie) && service_connection(copy))
    shutdown(copy, SHUT_RDWR);
  return 0;
}

/*
 * The test's uplink goes down: connections it made to its host services are
 * cut, as the hub's relay cuts its own, so a later test of the file is
 * offline again. They are found in every process of the sandbox and shut
 * down through a copy: shutdown() acts on the socket, not the copy.
 */
static void cut_service_connections(void) {
  if (nservices > 0) scan_sockets(cut_if_service, NULL, 0);
}

/*
 * One line from the pool on the hand-over channel:
 *   "service A.B.C.D PORT HOST_PORT"  a connect to A.B.C.D:PORT gets a host socket connected to 127.0.0.1:HOST_PORT
 *   "clear"                            no services any more (the test's uplink is down)
 * Returns the answer ("ok" or "error <why>").
 */
static const char *handover_command(char *line) {
  char *words[5];
  int n = 0;
  for (char *save = NULL, *w = strtok_r(line, " ", &save); w; w = strtok_r(NULL, " ", &save)) {
    if (n == 5) return "error too many words";
    words[n++] = w;
  }
  if (n == 1 && strcmp(words[0], "clear") == 0) {
    cut_service_connections();
    nservices = 0;
    drop_forwards();
    return "ok";
  }
  if (n == 4 && strcmp(words[0], "forward") == 0) {
    static char answer[48];
    struct in_addr address;
    int port = parse_port(words[1]), host_port = strcmp(words[2], "0") == 0 ? 0 : parse_port(words[2]);
    if (port < 0 || host_port < 0 || inet_pton(AF_INET, words[3], &address) != 1) return "error bad forward";
    forward_command((unsigned)port, (unsigned)host_port, address.s_addr, answer, sizeof answer);
    return answer;
  }
  if (n != 4 || strcmp(words[0], "service") != 0) return "error unknown command";
  struct in_addr gateway;
  int port = parse_port(words[2]), host_port = parse_port(words[3]);
  if (inet_pton(AF_INET, words[1], &gateway) != 1 || port < 0 || host_port < 0) return "error bad service";
  for (int i = 0; i < nservices; i++)
    if (services[i].gateway == gateway.s_addr && services[i].port == port) {
      services[i].host_port = (unsigned short)host_port;
      return "ok";
    }
  if (nservices == SHARE_MAX_SERVICES) return "error too many services";
  services[nservices++] = (struct service){gateway.s_addr, (unsigned short)port, (unsigned short)host_port};
  return "ok";
}

/* Reads what the pool sent; answers each whole line. Returns 0 once the channel is closed or broken. */
static int handover_read(void) {
  static char buf[256];
  static size_t len;
  ssize_t n = read(sv.handover, buf + len, sizeof buf - len);
  if (n < 0 && (errno == EINTR || errno == EAGAIN)) return 1;
  if (n <= 0) return 0;
  len += (size_t)n;
  char *nl;
  while ((nl = memchr(buf, '\n', len))) {
    *nl = '\0';
    char answer[64];
    int alen = snprintf(answer, sizeof answer, "%s\n", handover_command(buf));
    if (write(sv.handover, answer, (size_t)alen) != alen) return 0;
    len -= (size_t)(nl + 1 - buf);
    memmove(buf, nl + 1, len);
  }
  /* A line longer than any command: the other side is not the pool we know. */
  return len < sizeof buf;
}

unsigned long long share_netns_cookie(void) { return own_cookie(); }

int share_supervise(int listener, int factory, const unsigned short *ports, int nports, int handover, unsigned long long host, pid_t child) {
  sv.host = host;
  sv.handover = handover;
  if (handover >= 0) fcntl(handover, F_SETFL, O_NONBLOCK);
  sv.listener = listener;
  /* Spares for the first connects: made while the program starts. */
  if (factory >= 0) {
    factory_top_up(factory, 0);
    factory_top_up(factory, 1);
  }
  /* Older kernels refuse it (EINVAL): the wake-ups are then the usual ones. */
  ioctl(listener, SECCOMP_IOCTL_NOTIF_SET_FLAGS, SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP);
  sv.factory = factory;
  sv.ports = ports;
  sv.nports = nports;
  sv.cookie = own_cookie();
  char self[16] = "";
  sv.own_proc = readlink("/proc/self", self, sizeof self - 1) > 0 && strcmp(self, "1") == 0;
  if (pipe2(chld_pipe, O_CLOEXEC | O_NONBLOCK) < 0) return -1;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_chld;
  sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
  sigaction(SIGCHLD, &sa, NULL);
  static struct pollfd fds[4 + MAX_PENDING];
  for (;;) {
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
      if (pid == child) return status;
    if (pid < 0 && errno == ECHILD) return 0;
    fds[0] = (struct pollfd){chld_pipe[0], POLLIN, 0};
    /* All slots busy: later connects wait in the kernel until one frees. */
    fds[1] = (struct pollfd){sv.npending < MAX_PENDING ? sv.listener : -1, POLLIN, 0};
    fds[2] = (struct pollfd){sv.handover, POLLIN, 0};
    /* Spare host sockets on their way (factory_top_up). */
    fds[3] = (struct pollfd){made.nasked ? sv.factory : -1, POLLIN, 0};
    for (int i = 0; i < sv.npending; i++) fds[4 + i] = (struct pollfd){sv.pending[i].fd, POLLOUT, 0};
    /* With connects in flight, wake now and then to drop those whose target is gone. */
    if (poll(fds, 4 + sv.npending, sv.npending ? 1000 : -1) < 0) continue;
    /* The factory gone (an answer cut short, or a hang-up): nothing more to wait for; factory_socket says so. */
    if ((fds[3].revents & POLLIN) ? factory_receive(sv.factory) < 0 : (fds[3].revents & (POLLHUP | POLLERR)) != 0) made.nasked = 0;
    if (fds[0].revents) {
      char drain[64];
      while (read(chld_pipe[0], drain, sizeof drain) > 0) {}
    }
    /* The pool gone (or misbehaving): as when the uplink goes down, and nothing more to hear. */
    if (fds[2].revents && !handover_read()) {
      close(sv.handover);
      sv.handover = -1;
      cut_service_connections();
      nservices = 0;
      drop_forwards();
    }
    /* Finished connects first: they free their slots. */
    for (int i = sv.npending - 1; i >= 0; i--) {
      struct pending *p = &sv.pending[i];
      int keep = 1;
      if (fds[4 + i].revents) keep = finish(p);
      else if (!id_valid(p->id)) {
        close(p->fd);
        keep = 0;
      }
      if (!keep) {
        release_hold(p);
        sv.pending[i] = sv.pending[--sv.npending];
      }
    }
    if (fds[1].revents & POLLIN) {
      if (handle(&sv.pending[sv.npending])) sv.npending++;
    } else if (fds[1].revents & (POLLHUP | POLLERR | POLLNVAL)) {
      /* Nothing can notify any more: only reaping is left. */
      sv.listener = -1;
    }
  }
}
