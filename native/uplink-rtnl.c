/*
 * The uplink helper's rtnetlink part: veth pairs, addresses, routes and links
 * up or down, per-interface sysctls, and running a step inside a sandbox's
 * network namespace (setns there and straight back).
 */
#define _GNU_SOURCE
#include "uplink-internal.h"
#include "uplink-protocol.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/if_link.h>
#include <linux/inet_diag.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <linux/veth.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

int read_sysctl(const char *path) {
  char buf[16] = {0};
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  return n > 0 ? atoi(buf) : -1;
}

int if_sysctl(const char *ifname, const char *key, const char *value) {
  char path[128];
  snprintf(path, sizeof path, "/proc/sys/net/ipv4/conf/%.16s/%.32s", ifname, key);
  return write_sysctl(path, value);
}

/* Interface index by name, in the network namespace `fd` (a socket) belongs to. */
int ifindex_via(int fd, const char *name) {
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
  return ioctl(fd, SIOCGIFINDEX, &ifr) < 0 ? -errno : ifr.ifr_ifindex;
}


/* ---- rtnetlink ---- */

static int rt_call(int fd, struct msg *m) { return rt_request(fd, m, 0, NULL, 0); }

int link_up(int fd, int index, int up) {
  char buf[256];
  struct msg m = {buf, 0, sizeof buf, 0};
  size_t h = nl_begin(&m, RTM_NEWLINK, NLM_F_ACK, ++nl_seq);
  struct ifinfomsg ifi = {.ifi_family = AF_UNSPEC, .ifi_index = index, .ifi_flags = up ? IFF_UP : 0, .ifi_change = IFF_UP};
  put(&m, &ifi, sizeof ifi);
  end(&m, h);
  return rt_call(fd, &m);
}

int add_address(int fd, int index, uint32_t addr) {
  char buf[256];
  struct msg m = {buf, 0, sizeof buf, 0};
  size_t h = nl_begin(&m, RTM_NEWADDR, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, ++nl_seq);
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
  size_t h = nl_begin(&m, RTM_NEWROUTE, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, ++nl_seq);
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
int create_veth(const char *name, int netns_fd) {
  char buf[512];
  struct msg m = {buf, 0, sizeof buf, 0};
  size_t h = nl_begin(&m, RTM_NEWLINK, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, ++nl_seq);
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
int route_oif(uint32_t addr, char name[IFNAMSIZ]) {
  char buf[512];
  struct msg m = {buf, 0, sizeof buf, 0};
  size_t h = nl_begin(&m, RTM_GETROUTE, 0, ++nl_seq);
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

/* ---- inside a sandbox ---- */

/* Runs `fn` with a netlink socket of `protocol` opened in the network namespace `netns_fd` (we come back first). */
int in_netns(int netns_fd, int protocol, int (*fn)(int nl, void *), void *arg) {
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

/* Inside the sandbox: eth0 gets its address, comes up and carries the default route; or goes down. */
int configure_inner(int rt, void *p) {
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
int abort_connections(int diag, void *p) {
  uint32_t address = htonl(*(uint32_t *)p);
  struct {
    struct nlmsghdr h;
    struct inet_diag_req_v2 r;
  } req = {
      .h = {.nlmsg_len = sizeof req, .nlmsg_type = SOCK_DIAG_BY_FAMILY, .nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP, .nlmsg_seq = ++nl_seq},
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
    req.h = (struct nlmsghdr){.nlmsg_len = sizeof req, .nlmsg_type = SOCK_DESTROY, .nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK, .nlmsg_seq = ++nl_seq};
    req.r = (struct inet_diag_req_v2){.sdiag_family = AF_INET, .sdiag_protocol = IPPROTO_TCP, .idiag_states = ~0u, .id = found[i]};
    m.len = sizeof req;
    rt_request(diag, &m, 0, reply, sizeof reply); /* a socket that closed meanwhile: nothing to do */
  }
  return 0;
}


/*
 * IPv6 off on `ifname` in the network namespace `netns_fd` (-1: this one),
 * before the link is ever up: no link-local address is made, and the kernel
 * drops every IPv6 packet that arrives on it. The uplink's rules are IPv4
 * rules; this keeps IPv6 from going around them. A kernel without IPv6 has
 * nothing to turn off.
 */
int disable_ipv6(int netns_fd, const char *ifname) {
  char path[128];
  snprintf(path, sizeof path, "/proc/sys/net/ipv6/conf/%.16s/disable_ipv6", ifname);
  /* /proc/sys/net is the namespace of whoever opens it: open there, write from here. */
  if (netns_fd >= 0 && setns(netns_fd, CLONE_NEWNET) < 0) return errno;
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  int err = fd < 0 ? errno : 0;
  if (netns_fd >= 0 && setns(own_netns, CLONE_NEWNET) < 0) {
    fprintf(stderr, "netns-launch uplink: cannot return to its own network namespace\n");
    _exit(1);
  }
  if (err == ENOENT && access("/proc/sys/net/ipv6/conf", F_OK) < 0 && errno == ENOENT) return 0;
  if (err) return err;
  err = write(fd, "1", 1) < 0 ? errno : 0;
  close(fd);
  return err;
}
