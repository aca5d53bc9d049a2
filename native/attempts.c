/*
 * Recording attempts to reach the outside, in the kernel.
 *
 * Inside the sandbox's network namespace:
 *   - the black hole: a veth pair `offline` / `offline-peer` (no addresses,
 *     the peer down), and default routes (IPv4 and IPv6) via a gateway on
 *     `offline` that never answers. A packet to any outside address is
 *     actually built and passes the netfilter output hook (without a route,
 *     connect() fails before any packet exists). The routes have a high
 *     metric (1024): an uplink's default route via eth0 (metric 0, uplink.c)
 *     wins while it is attached, and when the uplink takes eth0 down the
 *     kernel drops that route and these take over again;
 *   - an nf_tables table counts each attempt in a dynamic set keyed by
 *     destination . protocol . port. A TCP connect (its SYN) then goes on to
 *     the black hole: the gateway's neighbour lookup fails after one probe
 *     (10-20 ms) and the kernel answers the connect with EHOSTUNREACH, as on a
 *     machine whose network is gone. A reject in the output hook cannot give
 *     that at once (docs/how-it-works.md). A UDP datagram is rejected with an
 *     ICMP error (EPERM at once: let through, it would vanish silently);
 *     other protocols are rejected uncounted.
 *     Loopback traffic is untouched, and so is traffic leaving through eth0,
 *     the inner end of an uplink (its first rule, `oifname "eth0" accept`):
 *     the uplink daemon filters that.
 *   - any other TCP packet to the outside belongs to a connection an uplink
 *     carried, sent after the uplink went down (a FIN when the connection is
 *     closed, its retransmits, a late ACK): it is dropped, not counted. It
 *     is not an attempt, and counting it blamed whatever test ran next.
 *   - route_localnet=1 on lo lets the black hole's ICMP error, addressed to
 *     127.0.0.1, come back in over lo.
 *   - a kernel without veth gets the old shape: default routes via lo, and
 *     TCP connects reset (ECONNREFUSED at once) instead.
 * The ruleset is sent as one nfnetlink batch (no `nft` process: that costs
 * 20-30 ms per start). Equivalent nft syntax is in docs/how-it-works.md.
 */
#define _GNU_SOURCE
#include "attempts.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_link.h>
#include <linux/rtnetlink.h>
#include <linux/veth.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "nl.h"

#define TABLE "vitest_netns"
#define BUF_SIZE 16384
/* The black hole outside destinations are routed to, and its veth peer (left down). */
#define OFFLINE "offline"
#define OFFLINE_PEER "offline-peer"

/* ---- expressions (the generic ones are in nl.h) ---- */

static void dynset_update(struct msg *m, const char *set, uint32_t set_id) {
  struct expr e = expr_begin(m, "dynset");
  attr_str(m, NFTA_DYNSET_SET_NAME, set);
  attr_u32(m, NFTA_DYNSET_SET_ID, set_id);
  attr_u32(m, NFTA_DYNSET_OP, NFT_DYNSET_OP_UPDATE);
  attr_u32(m, NFTA_DYNSET_SREG_KEY, NFT_REG_1);
  counter_expr(m, NFTA_DYNSET_EXPR);
  expr_end(m, e);
}

/* ---- the ruleset ---- */

static size_t rule_begin(struct msg *m, uint32_t seq, size_t *exprs) {
  size_t r = begin(m, NFT(NFT_MSG_NEWRULE), NLM_F_CREATE | NLM_F_APPEND, NFPROTO_INET, 0, seq);
  attr_str(m, NFTA_RULE_TABLE, TABLE);
  attr_str(m, NFTA_RULE_CHAIN, "output");
  *exprs = nest(m, NFTA_RULE_EXPRESSIONS);
  return r;
}
static void rule_end(struct msg *m, size_t r, size_t exprs) {
  nest_end(m, exprs);
  end(m, r);
}

static void add_set(struct msg *m, uint32_t seq, const char *name, uint32_t id, uint32_t key_len) {
  size_t s = begin(m, NFT(NFT_MSG_NEWSET), NLM_F_CREATE, NFPROTO_INET, 0, seq);
  attr_str(m, NFTA_SET_TABLE, TABLE);
  attr_str(m, NFTA_SET_NAME, name);
  attr_u32(m, NFTA_SET_FLAGS, NFT_SET_EVAL);
  attr_u32(m, NFTA_SET_KEY_TYPE, 0);
  attr_u32(m, NFTA_SET_KEY_LEN, key_len);
  attr_u32(m, NFTA_SET_ID, id);
  size_t d = nest(m, NFTA_SET_DESC);
  attr_u32(m, NFTA_SET_DESC_SIZE, 65535);
  nest_end(m, d);
  counter_expr(m, NFTA_SET_EXPR);
  end(m, s);
}

/* An uplink's interface (uplink.c names it eth0): its daemon decides what passes. */
static void accept_uplink(struct msg *m, uint32_t seq) {
  char name[IFNAMSIZ] = "eth0"; /* compared as nft does: all 16 bytes, zero padded */
  size_t exprs, r = rule_begin(m, seq, &exprs);
  meta(m, NFT_META_OIFNAME, NFT_REG_1);
  cmp(m, NFT_REG_1, NFT_CMP_EQ, name, sizeof name);
  accept_verdict(m);
  rule_end(m, r, exprs);
}

/* Loopback destinations pass untouched. */
static void accept_loopback(struct msg *m, uint32_t seq, int v6) {
  size_t exprs, r = rule_begin(m, seq, &exprs);
  meta(m, NFT_META_NFPROTO, NFT_REG_1);
  cmp_u8(m, NFT_REG_1, v6 ? NFPROTO_IPV6 : NFPROTO_IPV4);
  if (v6) {
    struct in6_addr one = IN6ADDR_LOOPBACK_INIT;
    payload(m, NFT_PAYLOAD_NETWORK_HEADER, 24, 16, NFT_REG_1);
    cmp(m, NFT_REG_1, NFT_CMP_EQ, &one, 16);
  } else {
    payload(m, NFT_PAYLOAD_NETWORK_HEADER, 16, 1, NFT_REG_1);
    cmp_u8(m, NFT_REG_1, 127);
  }
  accept_verdict(m);
  rule_end(m, r, exprs);
}

/* TCP flags SYN set, ACK clear: a connect's first packet (or its retransmit). */
static void match_tcp_syn(struct msg *m) {
  static const uint8_t syn_ack = 0x12, syn = 0x02;
  payload(m, NFT_PAYLOAD_TRANSPORT_HEADER, 13, 1, NFT_REG_1);
  bitwise_and(m, NFT_REG_1, &syn_ack, 1);
  cmp_u8(m, NFT_REG_1, syn);
}

/*
 * Count destination . protocol . port, then reject. TCP: only connects (see
 * the header); with the black hole they are let through to it, where they
 * fail as on a machine whose gateway does not answer.
 */
static void count_and_reject(struct msg *m, uint32_t seq, int v6, uint8_t proto, int black_hole) {
  size_t exprs, r = rule_begin(m, seq, &exprs);
  meta(m, NFT_META_L4PROTO, NFT_REG_1);
  cmp_u8(m, NFT_REG_1, proto);
  meta(m, NFT_META_NFPROTO, NFT_REG_1);
  cmp_u8(m, NFT_REG_1, v6 ? NFPROTO_IPV6 : NFPROTO_IPV4);
  if (proto == IPPROTO_TCP) match_tcp_syn(m);
  /* The key is built in consecutive 32-bit registers from NFT_REG_1 on. */
  if (v6) {
    payload(m, NFT_PAYLOAD_NETWORK_HEADER, 24, 16, NFT_REG32_00);
    meta(m, NFT_META_L4PROTO, NFT_REG32_00 + 4);
    payload(m, NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2, NFT_REG32_00 + 5);
  } else {
    payload(m, NFT_PAYLOAD_NETWORK_HEADER, 16, 4, NFT_REG32_00);
    meta(m, NFT_META_L4PROTO, NFT_REG32_00 + 1);
    payload(m, NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2, NFT_REG32_00 + 2);
  }
  dynset_update(m, v6 ? "out6" : "out4", v6 ? 2 : 1);
  if (proto == IPPROTO_TCP && black_hole) accept_verdict(m);
  else if (proto == IPPROTO_TCP) reject(m, NFT_REJECT_TCP_RST, 0);
  else reject(m, NFT_REJECT_ICMPX_UNREACH, NFT_REJECT_ICMPX_PORT_UNREACH);
  rule_end(m, r, exprs);
}

/* The rest of a connection an uplink carried, after it went down: dropped, not counted. */
static void drop_uplink_leftovers(struct msg *m, uint32_t seq) {
  size_t exprs, r = rule_begin(m, seq, &exprs);
  meta(m, NFT_META_L4PROTO, NFT_REG_1);
  cmp_u8(m, NFT_REG_1, IPPROTO_TCP);
  verdict(m, NF_DROP, NULL);
  rule_end(m, r, exprs);
}

/* Anything else leaving (ICMP, SCTP, ...): rejected, not counted. */
static void reject_rest(struct msg *m, uint32_t seq) {
  size_t exprs, r = rule_begin(m, seq, &exprs);
  reject(m, NFT_REJECT_ICMPX_UNREACH, NFT_REJECT_ICMPX_ADMIN_PROHIBITED);
  rule_end(m, r, exprs);
}

static int build_ruleset(struct msg *m, int black_hole) {
  uint32_t seq = (uint32_t)time(NULL);
  size_t b = begin(m, NFNL_MSG_BATCH_BEGIN, 0, AF_UNSPEC, NFNL_SUBSYS_NFTABLES, seq++);
  end(m, b);
  size_t t = begin(m, NFT(NFT_MSG_NEWTABLE), NLM_F_CREATE, NFPROTO_INET, 0, seq++);
  attr_str(m, NFTA_TABLE_NAME, TABLE);
  end(m, t);
  add_set(m, seq++, "out4", 1, 12); /* ipv4 . proto . port, each padded to 4 bytes */
  add_set(m, seq++, "out6", 2, 24);
  size_t c = begin(m, NFT(NFT_MSG_NEWCHAIN), NLM_F_CREATE, NFPROTO_INET, 0, seq++);
  attr_str(m, NFTA_CHAIN_TABLE, TABLE);
  attr_str(m, NFTA_CHAIN_NAME, "output");
  size_t h = nest(m, NFTA_CHAIN_HOOK);
  attr_u32(m, NFTA_HOOK_HOOKNUM, NF_INET_LOCAL_OUT);
  attr_u32(m, NFTA_HOOK_PRIORITY, 0);
  nest_end(m, h);
  attr_u32(m, NFTA_CHAIN_POLICY, NF_ACCEPT);
  attr_str(m, NFTA_CHAIN_TYPE, "filter");
  end(m, c);
  accept_uplink(m, seq++);
  accept_loopback(m, seq++, 0);
  accept_loopback(m, seq++, 1);
  count_and_reject(m, seq++, 0, IPPROTO_TCP, black_hole);
  count_and_reject(m, seq++, 1, IPPROTO_TCP, black_hole);
  drop_uplink_leftovers(m, seq++);
  count_and_reject(m, seq++, 0, IPPROTO_UDP, 0);
  count_and_reject(m, seq++, 1, IPPROTO_UDP, 0);
  reject_rest(m, seq++);
  size_t e = begin(m, NFNL_MSG_BATCH_END, 0, AF_UNSPEC, NFNL_SUBSYS_NFTABLES, seq++);
  end(m, e);
  return m->overflow ? -1 : 0;
}


/* The first error the kernel reported for the batch, 0 if none. */
static int batch_errors(int fd) {
  char buf[BUF_SIZE];
  for (;;) {
    ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : errno;
    for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n)) {
      if (h->nlmsg_type == NLMSG_ERROR) {
        int err = -((struct nlmsgerr *)NLMSG_DATA(h))->error;
        if (err) return err;
      }
    }
  }
}

/* ---- the black hole ---- */

/* One rtnetlink request, answered by an ack: 0 or an errno. */
static int rt_call(int fd, struct msg *m) { return rt_request(fd, m, 0, NULL, 0); }

/* The veth pair OFFLINE / OFFLINE_PEER, both here. */
static int create_offline(int fd, uint32_t seq) {
  char buf[512];
  struct msg m = {buf, 0, sizeof buf, 0};
  size_t h = nl_begin(&m, RTM_NEWLINK, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, seq);
  struct ifinfomsg ifi = {.ifi_family = AF_UNSPEC};
  put(&m, &ifi, sizeof ifi);
  attr_str(&m, IFLA_IFNAME, OFFLINE);
  size_t info = nest(&m, IFLA_LINKINFO);
  attr_str(&m, IFLA_INFO_KIND, "veth");
  size_t data = nest(&m, IFLA_INFO_DATA);
  size_t peer = nest(&m, VETH_INFO_PEER);
  put(&m, &ifi, sizeof ifi);
  attr_str(&m, IFLA_IFNAME, OFFLINE_PEER);
  nest_end(&m, peer);
  nest_end(&m, data);
  nest_end(&m, info);
  end(&m, h);
  return rt_call(fd, &m);
}

static int delete_offline(int fd, uint32_t seq) {
  char buf[128];
  struct msg m = {buf, 0, sizeof buf, 0};
  size_t h = nl_begin(&m, RTM_DELLINK, NLM_F_ACK, seq);
  struct ifinfomsg ifi = {.ifi_family = AF_UNSPEC};
  put(&m, &ifi, sizeof ifi);
  attr_str(&m, IFLA_IFNAME, OFFLINE);
  end(&m, h);
  return rt_call(fd, &m);
}

/* A per-interface sysctl, e.g. ("ipv4/neigh", "mcast_solicit", "1"); missing IPv6 is not an error. */
static int offline_sysctl(const char *dir, const char *ifname, const char *key, const char *value) {
  char path[128];
  snprintf(path, sizeof path, "/proc/sys/net/%s/%s/%s", dir, ifname, key);
  int err = write_sysctl(path, value);
  return err == ENOENT && strncmp(dir, "ipv6", 4) == 0 ? 0 : err;
}

/*
 * No addresses on either end (no IPv6 link-local either), and an unanswered
 * neighbour lookup given up after one probe and the kernel's minimum wait
 * (10 ms), instead of three probes a second apart. Routes via a down link
 * are used as any other (ignore_routes_with_linkdown off).
 */
static int offline_sysctls(void) {
  static const char *const settings[][4] = {
      {"ipv6/conf", OFFLINE, "addr_gen_mode", "1"},     {"ipv6/conf", OFFLINE_PEER, "addr_gen_mode", "1"},
      {"ipv4/neigh", OFFLINE, "mcast_solicit", "1"},    {"ipv4/neigh", OFFLINE, "ucast_solicit", "0"},
      {"ipv4/neigh", OFFLINE, "app_solicit", "0"},      {"ipv4/neigh", OFFLINE, "retrans_time_ms", "1"},
      {"ipv6/neigh", OFFLINE, "mcast_solicit", "1"},    {"ipv6/neigh", OFFLINE, "ucast_solicit", "0"},
      {"ipv6/neigh", OFFLINE, "app_solicit", "0"},      {"ipv6/neigh", OFFLINE, "retrans_time_ms", "1"},
      {"ipv4/conf", "all", "ignore_routes_with_linkdown", "0"},
      {"ipv4/conf", OFFLINE, "ignore_routes_with_linkdown", "0"},
      {"ipv6/conf", "all", "ignore_routes_with_linkdown", "0"},
      {"ipv6/conf", OFFLINE, "ignore_routes_with_linkdown", "0"},
  };
  for (size_t i = 0; i < sizeof settings / sizeof settings[0]; i++) {
    int err = offline_sysctl(settings[i][0], settings[i][1], settings[i][2], settings[i][3]);
    if (err) return err;
  }
  return 0;
}

static int offline_up(void) {
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) return errno;
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  strncpy(ifr.ifr_name, OFFLINE, IFNAMSIZ - 1);
  int err = ioctl(s, SIOCGIFFLAGS, &ifr) < 0 ? errno : 0;
  ifr.ifr_flags |= IFF_UP;
  if (!err && ioctl(s, SIOCSIFFLAGS, &ifr) < 0) err = errno;
  close(s);
  return err;
}

/*
 * Default route (metric 1024: an uplink's, metric 0, wins) via a gateway that
 * never answers: 169.254.0.1 (onlink, from 127.0.0.1) or fe80::1. One
 * neighbour entry per family, whatever the destination.
 */
static int offline_route(int fd, uint32_t seq, int v6, int index) {
  char buf[256];
  struct msg m = {buf, 0, sizeof buf, 0};
  size_t h = nl_begin(&m, RTM_NEWROUTE, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, seq);
  struct rtmsg rt = {.rtm_family = v6 ? AF_INET6 : AF_INET, .rtm_table = RT_TABLE_MAIN, .rtm_protocol = RTPROT_STATIC,
                     .rtm_scope = RT_SCOPE_UNIVERSE, .rtm_type = RTN_UNICAST, .rtm_flags = v6 ? 0 : RTNH_F_ONLINK};
  put(&m, &rt, sizeof rt);
  if (v6) {
    struct in6_addr gateway = {{{0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}}};
    attr(&m, RTA_GATEWAY, &gateway, sizeof gateway);
  } else {
    struct in_addr gateway = {htonl(0xa9fe0001)}, source = {htonl(INADDR_LOOPBACK)};
    attr(&m, RTA_GATEWAY, &gateway, sizeof gateway);
    attr(&m, RTA_PREFSRC, &source, sizeof source);
  }
  attr_host32(&m, RTA_OIF, (uint32_t)index);
  attr_host32(&m, RTA_PRIORITY, 1024);
  end(&m, h);
  int err = rt_call(fd, &m);
  /* IPv6 may be disabled: then there is nothing to route. */
  return v6 && (err == EAFNOSUPPORT || err == ENETUNREACH) ? 0 : err;
}

/*
 * The black hole: a connect to an outside address leaves through OFFLINE,
 * whose gateway never answers (its peer is down), and fails after one
 * neighbour probe (10-20 ms) with EHOSTUNREACH, from the kernel's own
 * "neighbour failed" ICMP error. That is what a machine with a route but no
 * working network gives; a reject in the output hook cannot give it at once
 * (see docs/how-it-works.md). Returns 0, or an errno with the link removed.
 */
static int black_hole_link(int fd, uint32_t *seq, int *index) {
  int err = create_offline(fd, (*seq)++);
  if (err) return err;
  if (!(err = offline_sysctls()) && !(err = offline_up())) {
    *index = (int)if_nametoindex(OFFLINE);
    if (*index > 0) return 0;
    err = errno;
  }
  delete_offline(fd, (*seq)++);
  return err;
}

static int black_hole_routes(int fd, uint32_t *seq, int index) {
  int err = offline_route(fd, (*seq)++, 0, index);
  return err ? err : offline_route(fd, (*seq)++, 1, index);
}

static int default_routes_via_lo(void) {
  int s4 = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s4 < 0) return errno;
  struct rtentry rt;
  memset(&rt, 0, sizeof rt);
  ((struct sockaddr_in *)&rt.rt_dst)->sin_family = AF_INET;
  ((struct sockaddr_in *)&rt.rt_genmask)->sin_family = AF_INET;
  ((struct sockaddr_in *)&rt.rt_gateway)->sin_family = AF_INET;
  rt.rt_flags = RTF_UP;
  rt.rt_dev = "lo";
  rt.rt_metric = 1025; /* stored as metric - 1: priority 1024, loses to an uplink's 0 */
  int err = ioctl(s4, SIOCADDRT, &rt) < 0 ? errno : 0;
  close(s4);
  if (err) return err;
  /* IPv6 may be disabled: then there is nothing to route. */
  int s6 = socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s6 < 0) return 0;
  struct in6_rtmsg rt6;
  memset(&rt6, 0, sizeof rt6);
  rt6.rtmsg_flags = RTF_UP;
  rt6.rtmsg_metric = 1024; /* loses to any route an uplink adds */
  rt6.rtmsg_ifindex = 1; /* lo is always 1 in a new namespace */
  err = ioctl(s6, SIOCADDRT, &rt6) < 0 ? errno : 0;
  close(s6);
  return err == ENETUNREACH || err == EAFNOSUPPORT ? 0 : err;
}

int attempts_setup(const char **why) {
  char buf[BUF_SIZE];
  struct msg m = {buf, 0, sizeof buf, 0};
  uint32_t seq = (uint32_t)time(NULL);
  /* Without the black hole (no veth in this kernel), outside connects are reset instead. */
  int index = 0, rt = netlink_socket(NETLINK_ROUTE);
  int black_hole = rt >= 0 && black_hole_link(rt, &seq, &index) == 0;
  *why = "nf_tables";
  int err = build_ruleset(&m, black_hole) < 0 ? ENOBUFS : 0;
  int fd = err ? -1 : netlink_socket(NETLINK_NETFILTER);
  if (!err && fd < 0) err = errno;
  if (!err) err = send(fd, buf, m.len, 0) < 0 ? errno : batch_errors(fd);
  if (fd >= 0) close(fd);
  /* route_localnet: the reset, or the black hole's ICMP error, is addressed to 127.0.0.1 from outside. */
  if (!err) *why = "route_localnet";
  if (!err) err = write_sysctl("/proc/sys/net/ipv4/conf/lo/route_localnet", "1");
  if (!err) err = write_sysctl("/proc/sys/net/ipv4/conf/all/route_localnet", "1");
  if (!err) *why = "default route";
  if (!err) err = black_hole ? black_hole_routes(rt, &seq, index) : default_routes_via_lo();
  if (err && black_hole) delete_offline(rt, seq++); /* no recording: nothing but lo */
  if (rt >= 0) close(rt);
  return err;
}

/* ---- reading the counters back ---- */

/* One element: "<proto> <address> <port> <packets>\n". */
static size_t format_element(struct nlattr *elem, int v6, char *out, size_t room) {
  struct nlattr *key = find(NLA_PAYLOAD_OF(elem), NLA_LEN_OF(elem), NFTA_SET_ELEM_KEY);
  if (!key) return 0;
  struct nlattr *value = find(NLA_PAYLOAD_OF(key), NLA_LEN_OF(key), NFTA_DATA_VALUE);
  if (!value || NLA_LEN_OF(value) < (size_t)(v6 ? 24 : 12)) return 0;
  const uint8_t *k = NLA_PAYLOAD_OF(value);
  uint64_t packets = 0;
  struct nlattr *expr = find(NLA_PAYLOAD_OF(elem), NLA_LEN_OF(elem), NFTA_SET_ELEM_EXPR);
  if (!expr) { /* newer kernels may list expressions */
    struct nlattr *list = find(NLA_PAYLOAD_OF(elem), NLA_LEN_OF(elem), NFTA_SET_ELEM_EXPRESSIONS);
    if (list) expr = find(NLA_PAYLOAD_OF(list), NLA_LEN_OF(list), NFTA_LIST_ELEM);
  }
  if (expr) {
    struct nlattr *data = find(NLA_PAYLOAD_OF(expr), NLA_LEN_OF(expr), NFTA_EXPR_DATA);
    struct nlattr *pk = data ? find(NLA_PAYLOAD_OF(data), NLA_LEN_OF(data), NFTA_COUNTER_PACKETS) : NULL;
    if (pk && NLA_LEN_OF(pk) >= 8) packets = be64(NLA_PAYLOAD_OF(pk));
  }
  char address[INET6_ADDRSTRLEN];
  inet_ntop(v6 ? AF_INET6 : AF_INET, k, address, sizeof address);
  uint8_t proto = k[v6 ? 16 : 4];
  uint16_t port = (uint16_t)(k[v6 ? 20 : 8] << 8 | k[v6 ? 21 : 9]);
  int n = snprintf(out, room, "%s %s %u %llu\n", proto == IPPROTO_TCP ? "tcp" : proto == IPPROTO_UDP ? "udp" : "ip",
                   address, port, (unsigned long long)packets);
  return n > 0 && (size_t)n < room ? (size_t)n : 0;
}

static size_t dump_set(int fd, const char *set, int v6, char *out, size_t room) {
  char buf[BUF_SIZE];
  struct msg m = {buf, 0, sizeof buf, 0};
  size_t h = begin(&m, NFT(NFT_MSG_GETSETELEM), NLM_F_DUMP, NFPROTO_INET, 0, (uint32_t)time(NULL));
  attr_str(&m, NFTA_SET_ELEM_LIST_TABLE, TABLE);
  attr_str(&m, NFTA_SET_ELEM_LIST_SET, set);
  end(&m, h);
  if (send(fd, buf, m.len, 0) < 0) return 0;
  size_t used = 0;
  for (;;) {
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n <= 0) return used;
    for (struct nlmsghdr *nh = (struct nlmsghdr *)buf; NLMSG_OK(nh, (size_t)n); nh = NLMSG_NEXT(nh, n)) {
      if (nh->nlmsg_type == NLMSG_DONE || nh->nlmsg_type == NLMSG_ERROR) return used;
      struct nlattr *attrs = (struct nlattr *)((char *)NLMSG_DATA(nh) + NLMSG_ALIGN(sizeof(struct nfgenmsg)));
      size_t len = nh->nlmsg_len - NLMSG_LENGTH(sizeof(struct nfgenmsg));
      struct nlattr *list = find(attrs, len, NFTA_SET_ELEM_LIST_ELEMENTS);
      if (!list) continue;
      size_t left = NLA_LEN_OF(list);
      for (struct nlattr *e = NLA_PAYLOAD_OF(list); left >= NLA_HDRLEN && e->nla_len >= NLA_HDRLEN && e->nla_len <= left;) {
        used += format_element(e, v6, out + used, room - used);
        size_t step = NLA_ALIGN(e->nla_len);
        if (step >= left) break;
        left -= step;
        e = (struct nlattr *)((char *)e + step);
      }
    }
  }
}

size_t attempts_dump(char *out, size_t room) {
  int fd = netlink_socket(NETLINK_NETFILTER);
  if (fd < 0) return 0;
  size_t used = dump_set(fd, "out4", 0, out, room);
  used += dump_set(fd, "out6", 1, out + used, room - used);
  close(fd);
  return used;
}
