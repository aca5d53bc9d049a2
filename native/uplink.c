/*
 * The uplink helper: `netns-launch uplink (--root | --hub) --pool A.B.C.D/N [--state-dir DIR]`.
 *
 * One per Vitest run. It gives a sandbox (a netns-launch process) a veth pair
 * with NAT and port forwards, and takes it away again, on request: one
 * command per line on stdin, one reply per line on stdout ("ok[ value]" or
 * "error <step>: <ERRNO>: <message>"). Everything is done with netlink from
 * this one process (an `ip` or `nft` process per step costs 10+ ms here).
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
 *           services to the host's loopback with splice(2), without
 *           /dev/net/tun.
 *
 * Commands (ID: decimal; the outer interface is vn<ID>; the /30 at BASE has
 * the gateway BASE+1 outside and the address BASE+2 on eth0 inside):
 *   attach ID PID BASE            veth into PID's network namespace (or up again)
 *   detach ID                     rules removed, both ends down (veth kept)
 *   release ID                    the sandbox ended: forget ID
 *   hostservice ID PROTO PORT HOSTPORT   test -> gateway:PORT -> host 127.0.0.1:HOSTPORT
 *   forward ID PROTO HOSTPORT PORT       host 127.0.0.1:HOSTPORT (0: free) -> address:PORT; replies "ok <hostport>"
 *   egress ID CIDR [PROTO PORT]          test -> CIDR (port), masqueraded
 */
#define _GNU_SOURCE
#include "uplink.h"

/* libc's network headers before the kernel's, so the kernel's skip what libc defines. */
#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_link.h>
#include <linux/inet_diag.h>
#include <linux/sock_diag.h>
#include <linux/rtnetlink.h>
#include <linux/veth.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "nl.h"

#ifndef NFT_TABLE_F_OWNER
#define NFT_TABLE_F_OWNER 2
#endif
#ifndef NF_NAT_RANGE_MAP_IPS
#define NF_NAT_RANGE_MAP_IPS 1
#define NF_NAT_RANGE_PROTO_SPECIFIED 2
#endif
#define CT_ESTABLISHED_RELATED 0x6 /* NF_CT_STATE_BIT(IP_CT_ESTABLISHED) | ..._RELATED */
#define CT_STATUS_DNAT 0x20        /* IPS_DST_NAT */
#define IFNAME_TYPE 41             /* nft's ifname datatype, so `nft list` prints names */
#define MAX_UPLINKS 4096
#define MAX_RULES 64
#define MAX_SOCKETS 16
#define MAX_CONNS 4096
#define PIPE_SIZE (1 << 18)
#define UPLINK_MTU 65535

/* ---- state ---- */

static int hub_mode;
static char table[64];
static uint32_t pool_base, pool_prefix;
static int nft_fd = -1, rt_fd = -1, own_netns = -1, epoll_fd = -1, factory = -1;
static struct stat own_net, host_net;
static uint32_t seq;
static const char *state_dir = "/run/vitest-netns";
static volatile sig_atomic_t stopping;

struct rule {
  uint64_t handle;
  const char *chain;
};

struct uplink {
  int used, attached;
  uint32_t id, base;
  pid_t pid;
  int netns_fd; /* the sandbox's network namespace, held from the first attach to release */
  struct rule rules[MAX_RULES];
  int nrules;
  int sockets[MAX_SOCKETS]; /* root: reserved host ports; hub: forward listeners */
  struct listener *listeners[MAX_SOCKETS]; /* hub: what epoll knows those listeners by */
  int nsockets;
  char egress_ifs[16][IFNAMSIZ]; /* root: interfaces whose forwarding this uplink needs */
  int negress_ifs;
};
/* Allocated on first use: a static array of them would fault in megabytes on the first scan. */
static struct uplink *uplinks[MAX_UPLINKS];

/* epoll items: stdin, listeners, and both sockets of a relayed connection */
enum kind { STDIN, LISTEN_FORWARD, LISTEN_SERVICE, CONN_SIDE };
struct item {
  enum kind kind;
  int fd;
};
struct listener {
  struct item item;
  uint32_t owner;     /* LISTEN_FORWARD: the uplink id */
  uint32_t to_addr;   /* forward: the test's address; service: 127.0.0.1 */
  uint16_t to_port;
  uint16_t host_port; /* LISTEN_SERVICE: the host port it relays to */
  uint16_t own_port;  /* LISTEN_SERVICE: the port it listens on in the hub */
};
struct conn;
struct side {
  struct item item;
  struct conn *conn;
  int which;
  uint32_t events; /* what epoll waits for now: changed only when it must be (a syscall each time) */
};
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

/* ---- small helpers ---- */

static const char *errno_name(int e) {
  static char other[16];
  switch (e) {
  case EPERM: return "EPERM";
  case ENOENT: return "ENOENT";
  case ESRCH: return "ESRCH";
  case EBADF: return "EBADF";
  case ENOMEM: return "ENOMEM";
  case EACCES: return "EACCES";
  case EBUSY: return "EBUSY";
  case EEXIST: return "EEXIST";
  case ENODEV: return "ENODEV";
  case EINVAL: return "EINVAL";
  case ENOSPC: return "ENOSPC";
  case ERANGE: return "ERANGE";
  case ENOBUFS: return "ENOBUFS";
  case EOPNOTSUPP: return "EOPNOTSUPP";
  case EPROTONOSUPPORT: return "EPROTONOSUPPORT";
  case EAFNOSUPPORT: return "EAFNOSUPPORT";
  case EADDRINUSE: return "EADDRINUSE";
  case EADDRNOTAVAIL: return "EADDRNOTAVAIL";
  case ENETUNREACH: return "ENETUNREACH";
  case EHOSTUNREACH: return "EHOSTUNREACH";
  case ECONNREFUSED: return "ECONNREFUSED";
  case EMFILE: return "EMFILE";
  case ENFILE: return "ENFILE";
  case E2BIG: return "E2BIG";
  default: snprintf(other, sizeof other, "E%d", e); return other;
  }
}

static void reply(const char *fmt, ...) {
  char line[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(line, sizeof line - 1, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if ((size_t)n > sizeof line - 2) n = sizeof line - 2;
  line[n++] = '\n';
  for (int off = 0; off < n;) {
    ssize_t w = write(1, line + off, (size_t)(n - off));
    if (w <= 0) {
      if (errno == EINTR) continue;
      _exit(0); /* nobody listens any more */
    }
    off += (int)w;
  }
}

/* A failed command: "error <step>: <ERRNO>: <message>". Returns -1. */
static int fail(const char *step, int err, const char *fmt, ...) {
  char message[300];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(message, sizeof message, fmt, ap);
  va_end(ap);
  reply("error %s: %s: %s", step, errno_name(err), message);
  return -1;
}

static int read_sysctl(const char *path) {
  char buf[16] = {0};
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  return n > 0 ? atoi(buf) : -1;
}

static int if_sysctl(const char *ifname, const char *key, const char *value) {
  char path[128];
  snprintf(path, sizeof path, "/proc/sys/net/ipv4/conf/%.16s/%.32s", ifname, key);
  return write_sysctl(path, value);
}

/* Interface index by name, in the network namespace `fd` (a socket) belongs to. */
static int ifindex_via(int fd, const char *name) {
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
  return ioctl(fd, SIOCGIFINDEX, &ifr) < 0 ? -errno : ifr.ifr_ifindex;
}

static void outer_name(uint32_t id, char name[IFNAMSIZ]) { snprintf(name, IFNAMSIZ, "vn%u", id); }
static uint32_t ip_be(uint32_t host) { return htonl(host); }

static int parse_cidr(const char *text, uint32_t *base, uint32_t *prefix) {
  unsigned a, b, c, d, p = 32;
  char tail;
  int n = sscanf(text, "%u.%u.%u.%u/%u%c", &a, &b, &c, &d, &p, &tail);
  if (n != 4 && n != 5) return -1;
  if (a > 255 || b > 255 || c > 255 || d > 255 || p > 32) return -1;
  uint32_t v = a << 24 | b << 16 | c << 8 | d;
  uint32_t mask = p ? 0xffffffffu << (32 - p) : 0;
  if (v & ~mask) return -1;
  *base = v;
  *prefix = p;
  return 0;
}

/* ---- rtnetlink ---- */

/*
 * Sends one request and reads until its answer: an error or ack (returned as
 * 0 or an errno), or, when `type` is given, the first message of that type,
 * copied to `reply`.
 */
static int rt_request(int fd, struct msg *m, uint16_t type, char *reply, size_t room) {
  if (m->overflow) return ENOBUFS;
  if (send(fd, m->buf, m->len, 0) < 0) return errno;
  uint32_t want = ((struct nlmsghdr *)m->buf)->nlmsg_seq;
  char buf[8192];
  for (;;) {
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n)) {
      if (h->nlmsg_seq != want) continue;
      if (h->nlmsg_type == NLMSG_ERROR) return -((struct nlmsgerr *)NLMSG_DATA(h))->error;
      if (type && h->nlmsg_type == type && h->nlmsg_len <= room) {
        memcpy(reply, h, h->nlmsg_len);
        return 0;
      }
    }
  }
}
static int rt_call(int fd, struct msg *m) { return rt_request(fd, m, 0, NULL, 0); }

static int link_up(int fd, int index, int up) {
  char buf[256];
  struct msg m = {buf, 0, sizeof buf, 0};
  size_t h = nl_begin(&m, RTM_NEWLINK, NLM_F_ACK, ++seq);
  struct ifinfomsg ifi = {.ifi_family = AF_UNSPEC, .ifi_index = index, .ifi_flags = up ? IFF_UP : 0, .ifi_change = IFF_UP};
  put(&m, &ifi, sizeof ifi);
  end(&m, h);
  return rt_call(fd, &m);
}

static int add_address(int fd, int index, uint32_t addr) {
  char buf[256];
  struct msg m = {buf, 0, sizeof buf, 0};
  size_t h = nl_begin(&m, RTM_NEWADDR, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, ++seq);
  struct ifaddrmsg ifa = {.ifa_family = AF_INET, .ifa_prefixlen = 30, .ifa_index = (uint32_t)index};
  put(&m, &ifa, sizeof ifa);
  uint32_t be = ip_be(addr);
  attr(&m, IFA_LOCAL, &be, 4);
  attr(&m, IFA_ADDRESS, &be, 4);
  end(&m, h);
  int err = rt_call(fd, &m);
  return err == EEXIST ? 0 : err;
}

/* Default route via `gateway` on `index`, metric 0: ahead of the recording's route via lo (metric 1024). */
static int add_default_route(int fd, int index, uint32_t gateway) {
  char buf[256];
  struct msg m = {buf, 0, sizeof buf, 0};
  size_t h = nl_begin(&m, RTM_NEWROUTE, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, ++seq);
  struct rtmsg rt = {.rtm_family = AF_INET, .rtm_table = RT_TABLE_MAIN, .rtm_protocol = RTPROT_STATIC, .rtm_scope = RT_SCOPE_UNIVERSE, .rtm_type = RTN_UNICAST};
  put(&m, &rt, sizeof rt);
  uint32_t be = ip_be(gateway);
  attr(&m, RTA_GATEWAY, &be, 4);
  attr_host32(&m, RTA_OIF, (uint32_t)index);
  attr_host32(&m, RTA_PRIORITY, 0);
  end(&m, h);
  int err = rt_call(fd, &m);
  return err == EEXIST ? 0 : err;
}

/* The veth pair: vn<id> here, its peer `eth0` created straight in the namespace `netns_fd`. */
static int create_veth(const char *name, int netns_fd) {
  char buf[512];
  struct msg m = {buf, 0, sizeof buf, 0};
  size_t h = nl_begin(&m, RTM_NEWLINK, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, ++seq);
  struct ifinfomsg ifi = {.ifi_family = AF_UNSPEC};
  put(&m, &ifi, sizeof ifi);
  attr_str(&m, IFLA_IFNAME, name);
  /* As large as lo's (65536 is above veth's maximum): with 1500, TCP through the uplink
   * ran at about half of host loopback here; with this, level with it. */
  attr_host32(&m, IFLA_MTU, UPLINK_MTU);
  size_t info = nest(&m, IFLA_LINKINFO);
  attr_str(&m, IFLA_INFO_KIND, "veth");
  size_t data = nest(&m, IFLA_INFO_DATA);
  size_t peer = nest(&m, VETH_INFO_PEER);
  put(&m, &ifi, sizeof ifi);
  attr_str(&m, IFLA_IFNAME, "eth0");
  attr_host32(&m, IFLA_MTU, UPLINK_MTU);
  attr_host32(&m, IFLA_NET_NS_FD, (uint32_t)netns_fd);
  nest_end(&m, peer);
  nest_end(&m, data);
  nest_end(&m, info);
  end(&m, h);
  return rt_call(rt_fd, &m);
}

/* The outgoing interface of the route to `addr` here, or an errno. */
static int route_oif(uint32_t addr, char name[IFNAMSIZ]) {
  char buf[512];
  struct msg m = {buf, 0, sizeof buf, 0};
  size_t h = nl_begin(&m, RTM_GETROUTE, 0, ++seq);
  struct rtmsg rt = {.rtm_family = AF_INET, .rtm_dst_len = 32};
  put(&m, &rt, sizeof rt);
  uint32_t be = ip_be(addr);
  attr(&m, RTA_DST, &be, 4);
  end(&m, h);
  char in[4096];
  int err = rt_request(rt_fd, &m, RTM_NEWROUTE, in, sizeof in);
  if (err) return err;
  size_t len;
  struct nlattr *a = msg_attrs((struct nlmsghdr *)in, sizeof(struct rtmsg), &len);
  struct nlattr *oif = find(a, len, RTA_OIF);
  if (!oif) return ENETUNREACH;
  return if_indextoname(*(uint32_t *)NLA_PAYLOAD_OF(oif), name) ? 0 : errno;
}

/* ---- nf_tables ---- */

static void batch_begin(struct msg *m) {
  size_t b = begin(m, NFNL_MSG_BATCH_BEGIN, 0, AF_UNSPEC, NFNL_SUBSYS_NFTABLES, ++seq);
  end(m, b);
}
static void batch_end(struct msg *m) {
  size_t e = begin(m, NFNL_MSG_BATCH_END, 0, AF_UNSPEC, NFNL_SUBSYS_NFTABLES, ++seq);
  end(m, e);
}

/*
 * Sends a batch; the kernel handles it within send(), so every answer is
 * queued when it returns. Echoed rules give their handles: handles[i] for
 * the i-th message with sequence number first_seq + i.
 */
static int batch_send(struct msg *m, uint32_t first_seq, uint64_t *handles, int nhandles) {
  if (m->overflow) return ENOBUFS;
  if (send(nft_fd, m->buf, m->len, 0) < 0) return errno;
  int err = 0;
  char buf[16384];
  for (;;) {
    ssize_t n = recv(nft_fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno == EAGAIN || errno == EWOULDBLOCK ? err : errno;
    }
    for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n)) {
      if (h->nlmsg_type == NLMSG_ERROR) {
        int e = -((struct nlmsgerr *)NLMSG_DATA(h))->error;
        if (e && !err) err = e;
      } else if (h->nlmsg_type == NFT(NFT_MSG_NEWRULE) && handles) {
        int i = (int)(h->nlmsg_seq - first_seq);
        size_t len;
        struct nlattr *a = msg_attrs(h, sizeof(struct nfgenmsg), &len);
        struct nlattr *handle = find(a, len, NFTA_RULE_HANDLE);
        if (handle && i >= 0 && i < nhandles) handles[i] = be64(NLA_PAYLOAD_OF(handle));
      }
    }
  }
}

static void add_chain(struct msg *m, const char *name, int hook, int priority, const char *type) {
  size_t c = begin(m, NFT(NFT_MSG_NEWCHAIN), NLM_F_CREATE, NFPROTO_IPV4, 0, ++seq);
  attr_str(m, NFTA_CHAIN_TABLE, table);
  attr_str(m, NFTA_CHAIN_NAME, name);
  if (type) {
    size_t h = nest(m, NFTA_CHAIN_HOOK);
    attr_u32(m, NFTA_HOOK_HOOKNUM, (uint32_t)hook);
    attr_u32(m, NFTA_HOOK_PRIORITY, (uint32_t)priority);
    nest_end(m, h);
    attr_u32(m, NFTA_CHAIN_POLICY, NF_ACCEPT);
    attr_str(m, NFTA_CHAIN_TYPE, type);
  }
  end(m, c);
}

static size_t rule_begin(struct msg *m, const char *chain, uint16_t flags, size_t *exprs) {
  size_t r = begin(m, NFT(NFT_MSG_NEWRULE), NLM_F_CREATE | NLM_F_APPEND | flags, NFPROTO_IPV4, 0, ++seq);
  attr_str(m, NFTA_RULE_TABLE, table);
  attr_str(m, NFTA_RULE_CHAIN, chain);
  *exprs = nest(m, NFTA_RULE_EXPRESSIONS);
  return r;
}
static void rule_end(struct msg *m, size_t r, size_t exprs) {
  nest_end(m, exprs);
  end(m, r);
}

/* Match clauses, written the way nft(8) writes them. */
static void if_in_set(struct msg *m, int out, int invert) {
  meta(m, out ? NFT_META_OIFNAME : NFT_META_IIFNAME, NFT_REG_1);
  lookup(m, "ifaces", 1, NFT_REG_1, invert);
}
static void if_is(struct msg *m, int out, const char *name) {
  char padded[IFNAMSIZ] = {0};
  strncpy(padded, name, IFNAMSIZ - 1);
  meta(m, out ? NFT_META_OIFNAME : NFT_META_IIFNAME, NFT_REG_1);
  cmp(m, NFT_REG_1, NFT_CMP_EQ, padded, IFNAMSIZ);
}
static void ct_any(struct msg *m, uint32_t key, uint32_t bits) {
  uint32_t zero = 0;
  ct_load(m, key, NFT_REG_1);
  bitwise_and(m, NFT_REG_1, &bits, 4);
  cmp(m, NFT_REG_1, NFT_CMP_NEQ, &zero, 4);
}
static void l4proto_is(struct msg *m, uint8_t proto) {
  meta(m, NFT_META_L4PROTO, NFT_REG_1);
  cmp_u8(m, NFT_REG_1, proto);
}
static void dport_is(struct msg *m, uint16_t port) {
  uint16_t be = htons(port);
  payload(m, NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2, NFT_REG_1);
  cmp(m, NFT_REG_1, NFT_CMP_EQ, &be, 2);
}
/* ip saddr (offset 12) or daddr (16) in base/prefix; nothing for /0. */
static void addr_in(struct msg *m, uint32_t offset, uint32_t base, uint32_t prefix) {
  if (prefix == 0) return;
  payload(m, NFT_PAYLOAD_NETWORK_HEADER, offset, 4, NFT_REG_1);
  if (prefix < 32) {
    uint32_t mask = ip_be(0xffffffffu << (32 - prefix));
    bitwise_and(m, NFT_REG_1, &mask, 4);
  }
  uint32_t be = ip_be(base);
  cmp(m, NFT_REG_1, NFT_CMP_EQ, &be, 4);
}
/* dnat (or snat) to addr, and to port unless it is 0. */
static void nat(struct msg *m, uint32_t type, uint32_t addr, uint16_t port) {
  uint32_t a = ip_be(addr);
  uint16_t p = htons(port);
  immediate(m, NFT_REG32_00, &a, 4);
  if (port) immediate(m, NFT_REG32_01, &p, 2);
  struct expr e = expr_begin(m, "nat");
  attr_u32(m, NFTA_NAT_TYPE, type);
  attr_u32(m, NFTA_NAT_FAMILY, NFPROTO_IPV4);
  attr_u32(m, NFTA_NAT_REG_ADDR_MIN, NFT_REG32_00);
  if (port) attr_u32(m, NFTA_NAT_REG_PROTO_MIN, NFT_REG32_01);
  attr_u32(m, NFTA_NAT_FLAGS, NF_NAT_RANGE_MAP_IPS | (port ? NF_NAT_RANGE_PROTO_SPECIFIED : 0));
  expr_end(m, e);
}

/* TCP gets a reset (ECONNREFUSED at once); anything else an ICMP error. */
static void reject_rules(struct msg *m, const char *chain, void (*match)(struct msg *)) {
  size_t exprs, r = rule_begin(m, chain, 0, &exprs);
  match(m);
  l4proto_is(m, IPPROTO_TCP);
  reject(m, NFT_REJECT_TCP_RST, 0);
  rule_end(m, r, exprs);
  r = rule_begin(m, chain, 0, &exprs);
  match(m);
  reject(m, NFT_REJECT_ICMP_UNREACH, 13 /* ICMP_PKT_FILTERED: administratively prohibited */);
  rule_end(m, r, exprs);
}
static void from_uplink(struct msg *m) { if_in_set(m, 0, 0); }
static void to_uplink(struct msg *m) { if_in_set(m, 1, 0); }
static void uplink_to_uplink(struct msg *m) {
  if_in_set(m, 0, 0);
  if_in_set(m, 1, 0);
}

static void simple_rule(struct msg *m, const char *chain, int in_set_dir, uint32_t ct_key, uint32_t ct_bits) {
  size_t exprs, r = rule_begin(m, chain, 0, &exprs);
  if_in_set(m, in_set_dir, 0);
  ct_any(m, ct_key, ct_bits);
  accept_verdict(m);
  rule_end(m, r, exprs);
}

/* The run's table: see docs/how-it-works.md for the same ruleset in nft syntax. */
static int create_ruleset(void) {
  static char buf[32768];
  struct msg m = {buf, 0, sizeof buf, 0};
  batch_begin(&m);
  size_t t = begin(&m, NFT(NFT_MSG_NEWTABLE), NLM_F_CREATE, NFPROTO_IPV4, 0, ++seq);
  attr_str(&m, NFTA_TABLE_NAME, table);
  size_t flags_at = m.len;
  if (!hub_mode) attr_u32(&m, NFTA_TABLE_FLAGS, NFT_TABLE_F_OWNER);
  end(&m, t);

  size_t s = begin(&m, NFT(NFT_MSG_NEWSET), NLM_F_CREATE, NFPROTO_IPV4, 0, ++seq);
  attr_str(&m, NFTA_SET_TABLE, table);
  attr_str(&m, NFTA_SET_NAME, "ifaces");
  attr_u32(&m, NFTA_SET_FLAGS, 0);
  attr_u32(&m, NFTA_SET_KEY_TYPE, IFNAME_TYPE);
  attr_u32(&m, NFTA_SET_KEY_LEN, IFNAMSIZ);
  attr_u32(&m, NFTA_SET_ID, 1);
  end(&m, s);

  size_t exprs, r;
  add_chain(&m, "input", NF_INET_LOCAL_IN, 0, "filter");
  simple_rule(&m, "input", 0, NFT_CT_STATE, CT_ESTABLISHED_RELATED);
  simple_rule(&m, "input", 0, NFT_CT_STATUS, CT_STATUS_DNAT); /* host services the test asked for */
  reject_rules(&m, "input", from_uplink);

  add_chain(&m, "egress", 0, 0, NULL);
  add_chain(&m, "forward", NF_INET_FORWARD, 0, "filter");
  simple_rule(&m, "forward", 1, NFT_CT_STATE, CT_ESTABLISHED_RELATED);
  simple_rule(&m, "forward", 0, NFT_CT_STATE, CT_ESTABLISHED_RELATED);
  reject_rules(&m, "forward", uplink_to_uplink); /* no test reaches another */
  reject_rules(&m, "forward", to_uplink);        /* nothing outside opens a connection into a test */
  r = rule_begin(&m, "forward", 0, &exprs);
  if_in_set(&m, 0, 0);
  verdict(&m, NFT_JUMP, "egress");
  rule_end(&m, r, exprs);
  reject_rules(&m, "forward", from_uplink);

  /* Root: a host service sees its test as a loopback client, as any local client would be
   * (Redis's protected mode, say, refuses others). The hub needs none: its relay connects
   * from the host's loopback anyway, and it tells a connection's test by the client address. */
  if (!hub_mode) {
    add_chain(&m, "input_nat", NF_INET_LOCAL_IN, 100, "nat");
    r = rule_begin(&m, "input_nat", 0, &exprs);
    if_in_set(&m, 0, 0);
    addr_in(&m, 16, 0x7f000000, 8);
    nat(&m, NFT_NAT_SNAT, 0x7f000001, 0);
    rule_end(&m, r, exprs);
  }

  add_chain(&m, "prerouting", NF_INET_PRE_ROUTING, -100, "nat");
  add_chain(&m, "output", NF_INET_LOCAL_OUT, -100, "nat");
  add_chain(&m, "postrouting", NF_INET_POST_ROUTING, 100, "nat");
  /* Clients on the host's loopback reaching a forward need a source the test can answer. */
  r = rule_begin(&m, "postrouting", 0, &exprs);
  if_in_set(&m, 1, 0);
  addr_in(&m, 12, 0x7f000000, 8);
  masquerade(&m);
  rule_end(&m, r, exprs);
  /* Egress the rules above let through leaves with the outgoing interface's address. */
  r = rule_begin(&m, "postrouting", 0, &exprs);
  addr_in(&m, 12, pool_base, pool_prefix);
  if_in_set(&m, 1, 1);
  masquerade(&m);
  rule_end(&m, r, exprs);
  batch_end(&m);

  int err = batch_send(&m, 0, NULL, 0);
  if ((err == EINVAL || err == EOPNOTSUPP) && !hub_mode) {
    /* Kernels before 5.12 know no owner flag: then a later run reclaims a killed run's table. */
    struct nlattr *flags = (struct nlattr *)(buf + flags_at);
    uint32_t none = 0;
    memcpy(NLA_PAYLOAD_OF(flags), &none, 4);
    err = batch_send(&m, 0, NULL, 0);
  }
  return err;
}

/* Adds one rule to `chain` of uplink `u`, remembering its handle for detach. */
static int add_rule(struct uplink *u, const char *chain, void (*build)(struct msg *, void *), void *arg) {
  if (u->nrules == MAX_RULES) return ENOSPC;
  char buf[4096];
  struct msg m = {buf, 0, sizeof buf, 0};
  batch_begin(&m);
  size_t exprs, r = rule_begin(&m, chain, NLM_F_ECHO, &exprs);
  uint32_t rule_seq = seq;
  build(&m, arg);
  rule_end(&m, r, exprs);
  batch_end(&m);
  uint64_t handle = 0;
  int err = batch_send(&m, rule_seq, &handle, 1);
  if (err) return err;
  if (!handle) return EPROTO;
  u->rules[u->nrules++] = (struct rule){handle, chain};
  return 0;
}

static int delete_rules(struct uplink *u) {
  if (!u->nrules) return 0;
  char buf[8192];
  struct msg m = {buf, 0, sizeof buf, 0};
  batch_begin(&m);
  for (int i = 0; i < u->nrules; i++) {
    size_t r = begin(&m, NFT(NFT_MSG_DELRULE), 0, NFPROTO_IPV4, 0, ++seq);
    attr_str(&m, NFTA_RULE_TABLE, table);
    attr_str(&m, NFTA_RULE_CHAIN, u->rules[i].chain);
    attr_be64(&m, NFTA_RULE_HANDLE, u->rules[i].handle);
    end(&m, r);
  }
  batch_end(&m);
  u->nrules = 0;
  return batch_send(&m, 0, NULL, 0);
}

static int set_element(const char *name, int add) {
  char buf[1024];
  struct msg m = {buf, 0, sizeof buf, 0};
  batch_begin(&m);
  size_t e = begin(&m, NFT(add ? NFT_MSG_NEWSETELEM : NFT_MSG_DELSETELEM), add ? NLM_F_CREATE : 0, NFPROTO_IPV4, 0, ++seq);
  attr_str(&m, NFTA_SET_ELEM_LIST_TABLE, table);
  attr_str(&m, NFTA_SET_ELEM_LIST_SET, "ifaces");
  size_t list = nest(&m, NFTA_SET_ELEM_LIST_ELEMENTS);
  size_t elem = nest(&m, NFTA_LIST_ELEM);
  size_t key = nest(&m, NFTA_SET_ELEM_KEY);
  char padded[IFNAMSIZ] = {0};
  strncpy(padded, name, IFNAMSIZ - 1);
  attr(&m, NFTA_DATA_VALUE, padded, IFNAMSIZ);
  nest_end(&m, key);
  nest_end(&m, elem);
  nest_end(&m, list);
  end(&m, e);
  batch_end(&m);
  int err = batch_send(&m, 0, NULL, 0);
  return err == (add ? EEXIST : ENOENT) ? 0 : err;
}

static int delete_table(const char *name) {
  char buf[512];
  struct msg m = {buf, 0, sizeof buf, 0};
  batch_begin(&m);
  size_t t = begin(&m, NFT(NFT_MSG_DELTABLE), 0, NFPROTO_IPV4, 0, ++seq);
  attr_str(&m, NFTA_TABLE_NAME, name);
  end(&m, t);
  batch_end(&m);
  return batch_send(&m, 0, NULL, 0);
}

/* A killed helper may stay a zombie for a while (its parent died too): that is dead enough. */
static int pid_alive(long pid) {
  char path[64], stat[256];
  snprintf(path, sizeof path, "/proc/%ld/stat", pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (pid <= 0 || fd < 0) return 0;
  ssize_t n = read(fd, stat, sizeof stat - 1);
  close(fd);
  if (n <= 0) return 0;
  stat[n] = '\0';
  const char *state = strrchr(stat, ')'); /* "pid (comm) S ..." */
  return state && state[1] == ' ' && state[2] != 'Z' && state[2] != 'X';
}

/* Root: tables of earlier runs whose helper is gone (only without the owner flag can there be any). */
static void reclaim_tables(void) {
  char buf[256];
  struct msg m = {buf, 0, sizeof buf, 0};
  size_t g = begin(&m, NFT(NFT_MSG_GETTABLE), NLM_F_DUMP, NFPROTO_IPV4, 0, ++seq);
  end(&m, g);
  if (send(nft_fd, buf, m.len, 0) < 0) return;
  char names[32][64];
  int count = 0;
  char in[16384];
  for (int done = 0; !done;) {
    ssize_t n = recv(nft_fd, in, sizeof in, 0);
    if (n <= 0) break;
    for (struct nlmsghdr *h = (struct nlmsghdr *)in; NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n)) {
      if (h->nlmsg_type == NLMSG_DONE || h->nlmsg_type == NLMSG_ERROR) {
        done = 1;
        break;
      }
      size_t len = 0;
      struct nlattr *first = msg_attrs(h, sizeof(struct nfgenmsg), &len);
      struct nlattr *a = find(first, len, NFTA_TABLE_NAME);
      const char *prefix = "vitest_netns_uplink_";
      if (!a || strncmp(NLA_PAYLOAD_OF(a), prefix, strlen(prefix)) != 0 || count == 32) continue;
      long pid = atol((char *)NLA_PAYLOAD_OF(a) + strlen(prefix));
      if (!pid_alive(pid)) snprintf(names[count++], sizeof names[0], "%s", (char *)NLA_PAYLOAD_OF(a));
    }
  }
  for (int i = 0; i < count; i++) delete_table(names[i]);
}

/* ---- forwarding on egress interfaces (root) ---- */

/*
 * Replies to egress are only routed if the interface they arrive on
 * forwards. Several runs may need the same interface at once, so the record
 * is shared, in the state directory, under a lock:
 *   orig.<ifname>         the value before the first run that needed it;
 *   held.<ifname>.<pid>   one per helper that needs it now.
 * The value goes back when no live helper holds the interface: at the last
 * release, or, after a helper was killed, when the next helper starts.
 */
struct forwarding {
  char ifname[IFNAMSIZ];
  int refs; /* uplinks of this helper that need it */
};
static struct forwarding forwardings[32];
static int nforwardings;

static int state_lock(void) {
  char path[300];
  snprintf(path, sizeof path, "%s/lock", state_dir);
  int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd >= 0) flock(fd, LOCK_EX);
  return fd;
}
static void state_unlock(int fd) {
  if (fd >= 0) close(fd); /* closing drops the lock */
}

static void state_path(char *out, size_t room, const char *kind, const char *ifname, long pid) {
  if (pid) snprintf(out, room, "%s/%s.%.16s.%ld", state_dir, kind, ifname, pid);
  else snprintf(out, room, "%s/%s.%.16s", state_dir, kind, ifname);
}

/* Under the lock: forgets dead holders; with none left alive, puts the original value back. */
static void restore_if_unheld(const char *ifname) {
  DIR *dir = opendir(state_dir);
  if (!dir) return;
  char prefix[64];
  int held = 0;
  snprintf(prefix, sizeof prefix, "held.%.16s.", ifname);
  struct dirent *e;
  while ((e = readdir(dir))) {
    if (strncmp(e->d_name, prefix, strlen(prefix)) != 0 || strchr(e->d_name + strlen(prefix), '.')) continue;
    long pid = atol(e->d_name + strlen(prefix));
    char path[600];
    snprintf(path, sizeof path, "%s/%s", state_dir, e->d_name);
    if (pid_alive(pid)) held = 1;
    else unlink(path);
  }
  closedir(dir);
  if (held) return;
  char path[300];
  state_path(path, sizeof path, "orig", ifname, 0);
  int value = read_sysctl(path);
  if (value == 0 || value == 1) if_sysctl(ifname, "forwarding", value ? "1" : "0");
  unlink(path);
}

static int forwarding_ref(struct uplink *u, const char *ifname) {
  for (int i = 0; i < u->negress_ifs; i++)
    if (strcmp(u->egress_ifs[i], ifname) == 0) return 0;
  if (u->negress_ifs == 16) return ENOSPC;
  struct forwarding *f = NULL;
  for (int i = 0; i < nforwardings && !f; i++)
    if (strcmp(forwardings[i].ifname, ifname) == 0) f = &forwardings[i];
  for (int i = 0; i < nforwardings && !f; i++)
    if (forwardings[i].refs == 0) f = &forwardings[i];
  if (!f) {
    if (nforwardings == 32) return ENOSPC;
    f = &forwardings[nforwardings++];
  }
  if (f->refs == 0) {
    snprintf(f->ifname, IFNAMSIZ, "%s", ifname);
    char path[300], now[128];
    int lock = state_lock();
    state_path(path, sizeof path, "orig", ifname, 0);
    snprintf(now, sizeof now, "/proc/sys/net/ipv4/conf/%.16s/forwarding", ifname);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644); /* only the first holder records it */
    if (fd >= 0) {
      char value[8];
      int n = snprintf(value, sizeof value, "%d\n", read_sysctl(now));
      if (write(fd, value, (size_t)n) < 0) { /* then nothing is restored: the value stays on */ }
      close(fd);
    }
    state_path(path, sizeof path, "held", ifname, (long)getpid());
    fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd >= 0) close(fd);
    int err = if_sysctl(ifname, "forwarding", "1");
    if (err) {
      unlink(path);
      restore_if_unheld(ifname);
    }
    state_unlock(lock);
    if (err) return err;
  }
  f->refs++;
  snprintf(u->egress_ifs[u->negress_ifs++], IFNAMSIZ, "%s", ifname);
  return 0;
}

static void forwarding_unref_all(struct uplink *u) {
  for (int j = 0; j < u->negress_ifs; j++)
    for (int i = 0; i < nforwardings; i++) {
      struct forwarding *f = &forwardings[i];
      if (f->refs == 0 || strcmp(f->ifname, u->egress_ifs[j]) != 0 || --f->refs > 0) continue;
      char path[300];
      int lock = state_lock();
      state_path(path, sizeof path, "held", f->ifname, (long)getpid());
      unlink(path);
      restore_if_unheld(f->ifname);
      state_unlock(lock);
    }
  u->negress_ifs = 0;
}

/* Root, at start: values that killed helpers could not put back. */
static void reclaim_forwarding(void) {
  int lock = state_lock();
  DIR *dir = opendir(state_dir);
  if (dir) {
    char names[64][IFNAMSIZ];
    int count = 0;
    struct dirent *e;
    while ((e = readdir(dir)) && count < 64)
      if (strncmp(e->d_name, "orig.", 5) == 0 && strlen(e->d_name + 5) < IFNAMSIZ) snprintf(names[count++], IFNAMSIZ, "%s", e->d_name + 5);
    closedir(dir);
    for (int i = 0; i < count; i++) restore_if_unheld(names[i]);
  }
  state_unlock(lock);
}

/* ---- the hub's relay ---- */

/* A socket in the host's network namespace, made by the host-side process. */
static int host_socket(void) {
  char c = 's';
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
  int fd;
  memcpy(&fd, CMSG_DATA(cm), sizeof fd);
  return fd;
}

static void watch(struct item *item, uint32_t events, int op) {
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

static void on_conn_event(struct side *side, uint32_t events) {
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

static void on_accept(struct listener *l) {
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
      int out = host_socket();
      if (out < 0) {
        close(fd);
        continue;
      }
      conn_start(fd, out, 0x7f000001, l->host_port, ntohl(peer.sin_addr.s_addr) >> 2);
    }
  }
}

static void close_conns_of(uint32_t id) {
  for (int i = 0; i < MAX_CONNS; i++)
    if (conns[i] && conns[i]->owner == id) conn_close(conns[i]);
}

/* The hub's listener on its loopback for host port `host_port`, shared by all tests. */
static struct listener *service_listener(uint16_t host_port, int *err) {
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

/* ---- commands ---- */

static struct uplink *find_uplink(uint32_t id) {
  for (int i = 0; i < MAX_UPLINKS; i++)
    if (uplinks[i] && uplinks[i]->used && uplinks[i]->id == id) return uplinks[i];
  return NULL;
}

static int parse_u32(const char *s, uint32_t max, uint32_t *out) {
  char *end;
  if (!s || *s < '0' || *s > '9') return -1;
  unsigned long v = strtoul(s, &end, 10);
  if (*end || v > max) return -1;
  *out = (uint32_t)v;
  return 0;
}

static int parse_proto(const char *s, uint8_t *proto) {
  if (s && strcmp(s, "tcp") == 0) *proto = IPPROTO_TCP;
  else if (s && strcmp(s, "udp") == 0) *proto = IPPROTO_UDP;
  else return -1;
  return 0;
}

/* Runs `fn` with a netlink socket of `protocol` opened in the network namespace `netns_fd` (we come back first). */
static int in_netns(int netns_fd, int protocol, int (*fn)(int nl, void *), void *arg) {
  if (setns(netns_fd, CLONE_NEWNET) < 0) return errno;
  int rt = netlink_socket(protocol);
  int err = rt < 0 ? errno : 0;
  if (setns(own_netns, CLONE_NEWNET) < 0) {
    /* Never stay in a sandbox's namespace: everything after would configure it. */
    fprintf(stderr, "netns-launch uplink: cannot return to its own network namespace\n");
    _exit(1);
  }
  if (err) return err;
  err = fn(rt, arg);
  close(rt);
  return err;
}

struct inner_args {
  uint32_t address, gateway;
  int up;
};
/* Inside the sandbox: eth0 gets its address, comes up and carries the default route; or goes down. */
static int configure_inner(int rt, void *p) {
  struct inner_args *a = p;
  int index = ifindex_via(rt, "eth0");
  if (index < 0) return -index;
  if (!a->up) return link_up(rt, index, 0);
  int err = add_address(rt, index, a->address);
  if (!err) err = link_up(rt, index, 1);
  if (!err) err = add_default_route(rt, index, a->gateway);
  return err;
}

/* Inside the sandbox: aborts (SOCK_DESTROY, as `ss -K`) every TCP socket bound to `address`. */
static int abort_connections(int diag, void *p) {
  uint32_t address = htonl(*(uint32_t *)p);
  struct {
    struct nlmsghdr h;
    struct inet_diag_req_v2 r;
  } req = {
      .h = {.nlmsg_len = sizeof req, .nlmsg_type = SOCK_DIAG_BY_FAMILY, .nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP, .nlmsg_seq = ++seq},
      .r = {.sdiag_family = AF_INET, .sdiag_protocol = IPPROTO_TCP, .idiag_states = ~0u},
  };
  if (send(diag, &req, sizeof req, 0) < 0) return errno;
  struct inet_diag_sockid found[256];
  int count = 0;
  char buf[16384];
  for (int done = 0; !done;) {
    ssize_t n = recv(diag, buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n)) {
      if (h->nlmsg_type == NLMSG_DONE || h->nlmsg_type == NLMSG_ERROR) {
        done = 1;
        break;
      }
      struct inet_diag_msg *msg = NLMSG_DATA(h);
      if (msg->id.idiag_src[0] == address && count < 256) found[count++] = msg->id;
    }
  }
  for (int i = 0; i < count; i++) {
    char reply[512];
    struct msg m = {(char *)&req, 0, sizeof req, 0};
    req.h = (struct nlmsghdr){.nlmsg_len = sizeof req, .nlmsg_type = SOCK_DESTROY, .nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK, .nlmsg_seq = ++seq};
    req.r = (struct inet_diag_req_v2){.sdiag_family = AF_INET, .sdiag_protocol = IPPROTO_TCP, .idiag_states = ~0u, .id = found[i]};
    m.len = sizeof req;
    rt_request(diag, &m, 0, reply, sizeof reply); /* a socket that closed meanwhile: nothing to do */
  }
  return 0;
}

/* Opens `pid`'s network namespace, refusing ours and the host's: a wrong pid would configure the host. */
static int open_sandbox_netns(uint32_t pid, int *fd) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%u/ns/net", pid);
  *fd = open(path, O_RDONLY | O_CLOEXEC);
  if (*fd < 0) return fail("netns", errno, "cannot open %s", path);
  struct stat st;
  if (fstat(*fd, &st) < 0 ||
      (st.st_dev == own_net.st_dev && st.st_ino == own_net.st_ino) ||
      (st.st_dev == host_net.st_dev && st.st_ino == host_net.st_ino)) {
    close(*fd);
    return fail("netns", EPERM, "pid %u is not in a sandbox's network namespace (it shares this one or the host's)", pid);
  }
  return 0;
}

static int cmd_attach(uint32_t id, uint32_t pid, uint32_t base) {
  if ((base & 3) || (pool_prefix && ((base ^ pool_base) >> (32 - pool_prefix)))) return fail("command", EINVAL, "%u is not a /30 of the pool", base);
  struct uplink *u = find_uplink(id);
  if (u && u->pid != (pid_t)pid) return fail("command", EEXIST, "uplink %u belongs to another sandbox", id);
  if (u && u->attached) {
    reply("ok"); /* a second test of the file joining: nothing to do */
    return 0;
  }
  char name[IFNAMSIZ];
  outer_name(id, name);
  int err, index;
  if (!u) {
    int netns_fd;
    if (open_sandbox_netns(pid, &netns_fd) < 0) return -1;
    for (int i = 0; i < MAX_UPLINKS && !u; i++) {
      if (!uplinks[i]) uplinks[i] = calloc(1, sizeof **uplinks);
      if (uplinks[i] && !uplinks[i]->used) u = uplinks[i];
    }
    if (!u) {
      close(netns_fd);
      return fail("command", ENOSPC, "too many uplinks");
    }
    if ((err = create_veth(name, netns_fd))) {
      close(netns_fd);
      return fail("veth", err, "cannot create %s into pid %u's namespace", name, pid);
    }
    /* The namespace is held from here to release: later steps never look a pid up again. */
    *u = (struct uplink){.used = 1, .id = id, .base = base, .pid = (pid_t)pid, .netns_fd = netns_fd};
    index = ifindex_via(rt_fd, name);
    err = index < 0 ? -index : add_address(rt_fd, index, base + 1);
    /* Per interface only: the host's global ip_forward stays as it is. */
    if (!err) err = if_sysctl(name, "forwarding", "1");
    if (!err) err = if_sysctl(name, "route_localnet", "1");
    if (!err) err = set_element(name, 1);
    if (err) {
      close(netns_fd);
      u->used = 0;
      return fail("address", err, "cannot configure %s", name);
    }
  } else {
    index = ifindex_via(rt_fd, name);
    if (index < 0) return fail("veth", -index, "%s is gone (did the sandbox end?)", name);
  }
  struct inner_args inner = {base + 2, base + 1, 1};
  err = link_up(rt_fd, index, 1);
  if (!err) err = in_netns(u->netns_fd, NETLINK_ROUTE, configure_inner, &inner);
  if (err) return fail("inside", err, "cannot configure eth0 in pid %u's namespace", pid);
  u->attached = 1;
  reply("ok");
  return 0;
}

/* Detach: the test's rules, listeners and relayed connections go, and both ends of the veth go down. */
static void take_down(struct uplink *u) {
  delete_rules(u);
  for (int i = 0; i < u->nsockets; i++) {
    epoll_ctl(epoll_fd, EPOLL_CTL_DEL, u->sockets[i], NULL);
    close(u->sockets[i]);
    free(u->listeners[i]);
    u->listeners[i] = NULL;
  }
  u->nsockets = 0;
  close_conns_of(u->id);
  forwarding_unref_all(u);
  if (!u->attached) return;
  u->attached = 0;
  struct inner_args down = {0, 0, 0};
  in_netns(u->netns_fd, NETLINK_ROUTE, configure_inner, &down);
  char name[IFNAMSIZ];
  outer_name(u->id, name);
  int index = ifindex_via(rt_fd, name);
  if (index > 0) link_up(rt_fd, index, 0);
}

/*
 * Release: the sandbox's process is gone. A TCP connection it left open through the uplink
 * would now retransmit its FIN over a link that is down, for minutes, holding the namespace and
 * the veth (measured: 106 s); aborting them lets the kernel free both at once. The link comes
 * up again for that moment so that the resets reach the other ends too (a host service sees
 * its client go instead of keeping it): nothing of the file runs any more, and its rules are
 * gone, so only those resets can pass.
 */
static void release(struct uplink *u) {
  take_down(u);
  char name[IFNAMSIZ];
  outer_name(u->id, name);
  int index = ifindex_via(rt_fd, name);
  struct inner_args up = {u->base + 2, u->base + 1, 1};
  if (index > 0 && link_up(rt_fd, index, 1) == 0) in_netns(u->netns_fd, NETLINK_ROUTE, configure_inner, &up);
  uint32_t address = u->base + 2;
  in_netns(u->netns_fd, NETLINK_SOCK_DIAG, abort_connections, &address);
  close(u->netns_fd);
  set_element(name, 0);
  u->used = 0;
}

struct rule_args {
  const char *ifname;
  uint32_t match_addr, nat_addr, cidr_prefix;
  uint16_t match_port, nat_port;
  uint8_t proto;
};
static void build_service(struct msg *m, void *p) {
  struct rule_args *a = p;
  if_is(m, 0, a->ifname);
  addr_in(m, 16, a->match_addr, 32);
  l4proto_is(m, a->proto);
  dport_is(m, a->match_port);
  nat(m, NFT_NAT_DNAT, a->nat_addr, a->nat_port);
}
static void build_forward(struct msg *m, void *p) {
  struct rule_args *a = p;
  addr_in(m, 16, 0x7f000001, 32);
  l4proto_is(m, a->proto);
  dport_is(m, a->match_port);
  nat(m, NFT_NAT_DNAT, a->nat_addr, a->nat_port);
}
static void build_egress(struct msg *m, void *p) {
  struct rule_args *a = p;
  if_is(m, 0, a->ifname);
  addr_in(m, 16, a->match_addr, a->cidr_prefix);
  if (a->proto) {
    l4proto_is(m, a->proto);
    dport_is(m, a->match_port);
  }
  accept_verdict(m);
}

static struct uplink *attached_uplink(uint32_t id) {
  struct uplink *u = find_uplink(id);
  if (!u || !u->attached) {
    fail("command", ENOENT, "uplink %u is not attached", id);
    return NULL;
  }
  return u;
}

static int cmd_hostservice(uint32_t id, uint8_t proto, uint32_t port, uint32_t host_port) {
  struct uplink *u = attached_uplink(id);
  if (!u) return -1;
  char name[IFNAMSIZ];
  outer_name(id, name);
  struct rule_args a = {.ifname = name, .match_addr = u->base + 1, .match_port = (uint16_t)port, .proto = proto, .nat_addr = 0x7f000001, .nat_port = (uint16_t)host_port};
  if (hub_mode) {
    if (proto != IPPROTO_TCP) return fail("hostservice", EPROTONOSUPPORT, "rootless uplinks relay TCP only");
    int err = 0;
    struct listener *l = service_listener((uint16_t)host_port, &err);
    if (!l) return fail("hostservice", err, "cannot listen in the hub for host port %u", host_port);
    a.nat_port = l->own_port;
  }
  int err = add_rule(u, "prerouting", build_service, &a);
  if (err) return fail("nft", err, "cannot add the host service rule");
  reply("ok");
  return 0;
}

static int cmd_forward(uint32_t id, uint8_t proto, uint32_t host_port, uint32_t port) {
  struct uplink *u = attached_uplink(id);
  if (!u) return -1;
  if (u->nsockets == MAX_SOCKETS) return fail("forward", ENOSPC, "too many forwards for one test");
  if (hub_mode && proto != IPPROTO_TCP) return fail("forward", EPROTONOSUPPORT, "rootless uplinks relay TCP only");
  /* Root: a socket bound to the port holds it for this run (DNAT takes the traffic before it).
   * Hub: a listener in the host's namespace, made there by the host-side process. */
  int fd = hub_mode ? host_socket() : socket(AF_INET, (proto == IPPROTO_TCP ? SOCK_STREAM : SOCK_DGRAM) | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return fail("socket", errno, "cannot make a socket for the forward");
  if (hub_mode) {
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  }
  struct sockaddr_in at = {.sin_family = AF_INET, .sin_port = htons((uint16_t)host_port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (bind(fd, (struct sockaddr *)&at, sizeof at) < 0) {
    int e = errno;
    close(fd);
    if (e == EADDRINUSE) return fail("bind", e, "host port %u is in use", host_port);
    return fail("bind", e, "cannot bind 127.0.0.1:%u", host_port);
  }
  socklen_t len = sizeof at;
  getsockname(fd, (struct sockaddr *)&at, &len);
  uint16_t bound = ntohs(at.sin_port);
  if (hub_mode) {
    if (listen(fd, 128) < 0) {
      int e = errno;
      close(fd);
      return fail("listen", e, "cannot listen on 127.0.0.1:%u", bound);
    }
    struct listener *l = calloc(1, sizeof *l);
    if (!l) {
      close(fd);
      return fail("forward", ENOMEM, "out of memory");
    }
    *l = (struct listener){{LISTEN_FORWARD, fd}, id, u->base + 2, (uint16_t)port, bound, 0};
    watch(&l->item, EPOLLIN, EPOLL_CTL_ADD);
    u->listeners[u->nsockets] = l;
    u->sockets[u->nsockets++] = fd;
  } else {
    struct rule_args a = {.match_port = bound, .proto = proto, .nat_addr = u->base + 2, .nat_port = (uint16_t)port};
    int err = add_rule(u, "output", build_forward, &a);
    if (err) {
      close(fd);
      return fail("nft", err, "cannot add the forward rule");
    }
    u->sockets[u->nsockets++] = fd;
  }
  reply("ok %u", bound);
  return 0;
}

static int cmd_egress(uint32_t id, const char *cidr, uint8_t proto, uint32_t port) {
  struct uplink *u = attached_uplink(id);
  if (!u) return -1;
  uint32_t base, prefix;
  if (parse_cidr(cidr, &base, &prefix) < 0) return fail("command", EINVAL, "%s is not an IPv4 block", cidr);
  char name[IFNAMSIZ];
  outer_name(id, name);
  if (!hub_mode && prefix > 0) {
    char out[IFNAMSIZ];
    int err = route_oif(base, out);
    if (err) return fail("egress", err == EHOSTUNREACH ? ENETUNREACH : err, "no route to %s on this host", cidr);
    if (strcmp(out, "lo") != 0 && (err = forwarding_ref(u, out))) return fail("egress", err, "cannot turn forwarding on for %s", out);
  } else if (!hub_mode) {
    /* Everywhere: replies may come back on any interface but lo and the uplinks. */
    struct if_nameindex *all = if_nameindex();
    for (struct if_nameindex *i = all; i && i->if_index; i++) {
      if (strcmp(i->if_name, "lo") == 0 || (strncmp(i->if_name, "vn", 2) == 0 && i->if_name[2] >= '0' && i->if_name[2] <= '9')) continue;
      int err = forwarding_ref(u, i->if_name);
      if (err) {
        if_freenameindex(all);
        return fail("egress", err, "cannot turn forwarding on for %s", i->if_name);
      }
    }
    if (all) if_freenameindex(all);
  }
  struct rule_args a = {.ifname = name, .match_addr = base, .cidr_prefix = prefix, .proto = proto, .match_port = (uint16_t)port};
  int err = add_rule(u, "egress", build_egress, &a);
  if (err) return fail("nft", err, "cannot add the egress rule");
  reply("ok");
  return 0;
}

static void command(char *line) {
  char *argv[8] = {0};
  int argc = 0;
  for (char *save = NULL, *tok = strtok_r(line, " \t\r", &save); tok && argc < 8; tok = strtok_r(NULL, " \t\r", &save)) argv[argc++] = tok;
  if (argc == 0) {
    fail("command", EINVAL, "empty line");
    return;
  }
  uint32_t id, a, b;
  uint8_t proto = 0;
  const char *what = argv[0];
  if (argc < 2 || parse_u32(argv[1], (1u << 30) - 1, &id) < 0) {
    fail("command", EINVAL, "'%s' needs an uplink id", what);
    return;
  }
  if (strcmp(what, "attach") == 0 && argc == 4) {
    uint32_t base, prefix;
    if (parse_u32(argv[2], 1u << 22, &a) < 0 || a < 2 || parse_cidr(argv[3], &base, &prefix) < 0 || prefix != 32) {
      fail("command", EINVAL, "usage: attach ID PID A.B.C.D");
      return;
    }
    cmd_attach(id, a, base);
  } else if ((strcmp(what, "detach") == 0 || strcmp(what, "release") == 0) && argc == 2) {
    struct uplink *u = find_uplink(id);
    if (u && what[0] == 'r') release(u);
    else if (u) take_down(u);
    reply("ok");
  } else if (strcmp(what, "hostservice") == 0 && argc == 5) {
    if (parse_proto(argv[2], &proto) < 0 || parse_u32(argv[3], 65535, &a) < 0 || a == 0 || parse_u32(argv[4], 65535, &b) < 0 || b == 0) {
      fail("command", EINVAL, "usage: hostservice ID tcp|udp PORT HOSTPORT (ports 1-65535)");
      return;
    }
    cmd_hostservice(id, proto, a, b);
  } else if (strcmp(what, "forward") == 0 && argc == 5) {
    if (parse_proto(argv[2], &proto) < 0 || parse_u32(argv[3], 65535, &a) < 0 || parse_u32(argv[4], 65535, &b) < 0 || b == 0) {
      fail("command", EINVAL, "usage: forward ID tcp|udp HOSTPORT PORT (HOSTPORT 0: a free one)");
      return;
    }
    cmd_forward(id, proto, a, b);
  } else if (strcmp(what, "egress") == 0 && (argc == 3 || argc == 5)) {
    a = 0;
    if (argc == 5 && (parse_proto(argv[3], &proto) < 0 || parse_u32(argv[4], 65535, &a) < 0 || a == 0)) {
      fail("command", EINVAL, "usage: egress ID CIDR [tcp|udp PORT]");
      return;
    }
    cmd_egress(id, argv[2], proto, a);
  } else {
    fail("command", EINVAL, "unknown command or wrong arguments: %s", what);
  }
}

/* ---- start-up and the main loop ---- */

static void on_signal(int sig) {
  (void)sig;
  stopping = 1;
}

static void clean_up(void) {
  for (int i = 0; i < MAX_UPLINKS; i++)
    if (uplinks[i] && uplinks[i]->used) forwarding_unref_all(uplinks[i]);
  if (!hub_mode && nft_fd >= 0) delete_table(table);
}

/* Hub: the process that stays in the host's network namespace and makes sockets there. */
static int run_host_side(pid_t hub, int channel) {
  signal(SIGPIPE, SIG_IGN);
  for (;;) {
    char c;
    ssize_t n = recv(channel, &c, 1, 0);
    if (n < 0 && errno == EINTR) {
      if (stopping) kill(hub, SIGTERM), stopping = 0;
      continue;
    }
    if (n <= 0) break;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
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
  if (root == hub || !pool || parse_cidr(pool, &pool_base, &pool_prefix) < 0 || pool_prefix > 30) {
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
    snprintf(table, sizeof table, "vitest_netns_uplink");
  } else {
    if (geteuid() != 0) return start_failed("root", EPERM, "--root needs uid 0");
    snprintf(table, sizeof table, "vitest_netns_uplink_%d", (int)getpid());
    if (mkdir(state_dir, 0755) < 0 && errno != EEXIST) return start_failed("state", errno, state_dir);
  }
  own_netns = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
  if (own_netns < 0 || fstat(own_netns, &own_net) < 0) return start_failed("netns", errno, "/proc/self/ns/net");
  if ((rt_fd = netlink_socket(NETLINK_ROUTE)) < 0) return start_failed("rtnetlink", errno, "socket");
  if ((nft_fd = netlink_socket(NETLINK_NETFILTER)) < 0) return start_failed("nf_tables", errno, "socket");
  if (!hub) {
    reclaim_forwarding();
    reclaim_tables();
  }
  int err = create_ruleset();
  if (err) return start_failed("nf_tables", err, table);
  if ((epoll_fd = epoll_create1(EPOLL_CLOEXEC)) < 0) return start_failed("epoll", errno, "epoll_create1");
  struct item in = {STDIN, 0};
  fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
  watch(&in, EPOLLIN, EPOLL_CTL_ADD);
  reply("ready %d", hub ? (int)getpid() : 0);

  static char line[4096];
  size_t have = 0;
  while (!stopping) {
    struct epoll_event events[64];
    int n = epoll_wait(epoll_fd, events, 64, -1);
    if (n < 0) continue; /* EINTR: a signal; the loop condition decides */
    for (int i = 0; i < n; i++) {
      struct item *item = events[i].data.ptr;
      if (item->kind == STDIN) {
        ssize_t r = read(0, line + have, sizeof line - 1 - have);
        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) stopping = 1;
        if (r <= 0) continue;
        have += (size_t)r;
        char *start = line, *nl;
        while ((nl = memchr(start, '\n', have - (size_t)(start - line)))) {
          *nl = '\0';
          command(start);
          start = nl + 1;
        }
        have -= (size_t)(start - line);
        memmove(line, start, have);
        if (have == sizeof line - 1) have = 0; /* a line this long is not a command */
        break; /* a command may have closed connections the rest of this batch names */
      } else if (item->kind == LISTEN_FORWARD || item->kind == LISTEN_SERVICE) {
        on_accept((struct listener *)item);
      } else {
        on_conn_event((struct side *)item, events[i].events);
        /* The connection may be gone now; the rest of this batch may name it: start over. */
        break;
      }
    }
  }
  clean_up();
  return 0;
}
