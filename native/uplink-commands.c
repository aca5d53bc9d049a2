/*
 * The uplink helper's commands: the sandboxes the pool registered (each with
 * at most one uplink), and what register, attach, detach, release,
 * hostservice, forward and egress do with the other parts. Commands arrive
 * parsed and checked (uplink-protocol.c); a command names a registered
 * sandbox, never a pid, namespace or interface.
 */
#define _GNU_SOURCE
#include "uplink-internal.h"
#include "uplink-protocol.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/netlink.h>
#include <linux/nsfs.h>
#include <sys/ioctl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

/*
 * One record per sandbox the pool registered, from `register` to `release`.
 * Allocated on first use: a static array of them would fault in megabytes on
 * the first scan.
 */
static struct uplink *sandboxes[MAX_UPLINKS];

static struct uplink *find_sandbox(uint32_t sandbox) {
  for (int i = 0; i < MAX_UPLINKS; i++)
    if (sandboxes[i] && sandboxes[i]->used && sandboxes[i]->sandbox == sandbox) return sandboxes[i];
  return NULL;
}

/* The sandbox holding uplink `id`, if any. */
static struct uplink *find_uplink(uint32_t id) {
  for (int i = 0; i < MAX_UPLINKS; i++)
    if (sandboxes[i] && sandboxes[i]->used && sandboxes[i]->has_block && sandboxes[i]->id == id) return sandboxes[i];
  return NULL;
}

static int same_file(const struct stat *a, const struct stat *b) { return a->st_dev == b->st_dev && a->st_ino == b->st_ino; }

/*
 * Opens `pid`'s network namespace for good, if it is a sandbox's: not ours,
 * not the host's, and in a user namespace that is a child of ours (every
 * sandbox of this run is made so: rootless, the launcher's --hub; as root,
 * made by uid 0 of this user namespace). A wrong pid would configure the host
 * or a container.
 */
static int open_sandbox_netns(uint32_t pid, int *fd) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%u/ns/net", pid);
  *fd = open(path, O_RDONLY | O_CLOEXEC);
  if (*fd < 0) return fail("register", errno, "cannot open %s", path);
  struct stat st;
  if (fstat(*fd, &st) < 0 || same_file(&st, &own_net) || same_file(&st, &host_net)) {
    close(*fd);
    return fail("register", EPERM, "pid %u is not in a sandbox's network namespace (it shares this one or the host's)", pid);
  }
  snprintf(path, sizeof path, "/proc/%u/ns/user", pid);
  int user = open(path, O_RDONLY | O_CLOEXEC);
  int parent = user < 0 ? -1 : ioctl(user, NS_GET_PARENT);
  int err = parent < 0 ? errno : 0;
  struct stat parent_st;
  if (!err && fstat(parent, &parent_st) < 0) err = errno;
  if (user >= 0) close(user);
  if (parent >= 0) close(parent);
  if (err || !same_file(&parent_st, &own_user)) {
    close(*fd);
    return fail("register", EPERM, "pid %u is not a sandbox of this run (its user namespace is not a child of the helper's)", pid);
  }
  return 0;
}

static int cmd_register(uint32_t sandbox, uint32_t pid) {
  if (find_sandbox(sandbox)) return fail("register", EEXIST, "sandbox %u is registered already", sandbox);
  struct uplink *s = NULL;
  for (int i = 0; i < MAX_UPLINKS && !s; i++) {
    if (!sandboxes[i]) sandboxes[i] = calloc(1, sizeof **sandboxes);
    if (sandboxes[i] && !sandboxes[i]->used) s = sandboxes[i];
  }
  if (!s) return fail("register", ENOSPC, "too many sandboxes");
  int netns_fd;
  if (open_sandbox_netns(pid, &netns_fd) < 0) return -1;
  /* The namespace is held from here to release: no later step looks a pid up again. */
  *s = (struct uplink){.used = 1, .sandbox = sandbox, .pid = (pid_t)pid, .netns_fd = netns_fd};
  reply("ok");
  return 0;
}

static struct uplink *registered(uint32_t sandbox) {
  struct uplink *s = find_sandbox(sandbox);
  if (!s) fail("command", ENOENT, "sandbox %u is not registered", sandbox);
  return s;
}

static int cmd_attach(uint32_t sandbox, uint32_t id, uint32_t base) {
  struct uplink *u = registered(sandbox);
  if (!u) return -1;
  if ((base & 3) || (pool_prefix && ((base ^ pool_base) >> (32 - pool_prefix)))) return fail("command", EINVAL, "%u.%u.%u.%u is not a /30 of the pool", base >> 24, (base >> 16) & 255, (base >> 8) & 255, base & 255);
  struct uplink *holder = find_uplink(id);
  if (holder && holder != u) return fail("command", EEXIST, "uplink %u belongs to another sandbox", id);
  if (u->has_block && u->id != id) return fail("command", EEXIST, "sandbox %u has uplink %u already", sandbox, u->id);
  if (u->attached) {
    reply("ok"); /* a second test of the file joining: nothing to do */
    return 0;
  }
  char name[IFNAMSIZ];
  outer_name(id, name);
  int err, index;
  if (!u->has_block) {
    if ((err = create_veth(name, u->netns_fd))) return fail("veth", err, "cannot create %s into sandbox %u's namespace", name, sandbox);
    u->has_block = 1;
    u->id = id;
    u->base = base;
    /* Both ends are still down: IPv6 goes off before either could get an address. */
    if ((err = disable_ipv6(-1, name)) || (err = disable_ipv6(u->netns_fd, "eth0"))) {
      u->has_block = 0;
      return fail("ipv6", err, "cannot turn IPv6 off on %s and its eth0", name);
    }
    index = ifindex_via(rt_fd, name);
    err = index < 0 ? -index : add_address(rt_fd, index, base + 1);
    /* Per interface only: the host's global ip_forward stays as it is. */
    if (!err) err = if_sysctl(name, "forwarding", "1");
    if (!err) err = if_sysctl(name, "route_localnet", "1");
    if (!err) err = set_element(name, 1);
    if (err) {
      u->has_block = 0;
      return fail("address", err, "cannot configure %s", name);
    }
  } else {
    index = ifindex_via(rt_fd, name);
    if (index < 0) return fail("veth", -index, "%s is gone (did the sandbox end?)", name);
  }
  struct inner_args inner = {base + 2, base + 1, 1};
  err = link_up(rt_fd, index, 1);
  if (!err) err = in_netns(u->netns_fd, NETLINK_ROUTE, configure_inner, &inner);
  if (err) return fail("inside", err, "cannot configure eth0 in sandbox %u's namespace", sandbox);
  u->attached = 1;
  reply("ok");
  return 0;
}

/* Detach: the test's rules, listeners and relayed connections go, and both ends of the veth go down. */
static void take_down(struct uplink *u) {
  delete_rules(u);
  close_flows_of(u->id); /* before the listeners they name */
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
  if (!u->has_block) {
    close(u->netns_fd);
    u->used = 0;
    return;
  }
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
  u->used = u->has_block = 0;
}

static struct uplink *attached_uplink(uint32_t sandbox) {
  struct uplink *u = registered(sandbox);
  if (u && !u->attached) {
    fail("command", ENOENT, "sandbox %u has no uplink attached", sandbox);
    return NULL;
  }
  return u;
}

/*
 * Hub, UDP: a socket of the hub's bound at gateway:PORT, where the test's
 * datagrams arrive, let in by an accept rule for this uplink; the relay gives
 * each of the test's sockets a host socket connected to 127.0.0.1:HOSTPORT.
 */
static int hub_udp_service(struct uplink *u, const char *name, uint32_t port, uint32_t host_port) {
  for (int i = 0; i < u->nsockets; i++) {
    struct listener *l = u->listeners[i];
    if (!l || l->item.kind != UDP_SERVICE || l->own_port != port) continue;
    if (l->to_port == host_port) {
      reply("ok"); /* asked again: the same relay */
      return 0;
    }
    return fail("hostservice", EADDRINUSE, "port %u at the gateway relays to host port %u already", port, l->to_port);
  }
  if (u->nsockets == MAX_SOCKETS) return fail("hostservice", ENOSPC, "too many UDP host services and forwards for one test");
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return fail("socket", errno, "cannot make a UDP socket in the hub");
  struct sockaddr_in at = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = ip_be(u->base + 1)};
  if (bind(fd, (struct sockaddr *)&at, sizeof at) < 0) {
    int e = errno;
    close(fd);
    return fail("bind", e, "cannot bind the gateway's UDP port %u in the hub", port);
  }
  struct rule_args a = {.ifname = name, .match_addr = u->base + 1, .match_port = (uint16_t)port, .proto = IPPROTO_UDP};
  int err = add_rule(u, "relayed", build_relayed, &a);
  if (err) {
    close(fd);
    return fail("nft", err, "cannot add the host service rule");
  }
  if (!udp_listener(u, UDP_SERVICE, fd, 0x7f000001, (uint16_t)host_port, (uint16_t)port)) {
    close(fd);
    return fail("hostservice", ENOMEM, "out of memory");
  }
  reply("ok");
  return 0;
}

static int cmd_hostservice(uint32_t sandbox, uint8_t proto, uint32_t port, uint32_t host_port) {
  struct uplink *u = attached_uplink(sandbox);
  if (!u) return -1;
  char name[IFNAMSIZ];
  outer_name(u->id, name);
  struct rule_args a = {.ifname = name, .match_addr = u->base + 1, .match_port = (uint16_t)port, .proto = proto, .nat_addr = 0x7f000001, .nat_port = (uint16_t)host_port};
  if (hub_mode && proto == IPPROTO_UDP) return hub_udp_service(u, name, port, host_port);
  if (hub_mode) {
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

static int cmd_forward(uint32_t sandbox, uint8_t proto, uint32_t host_port, uint32_t port) {
  struct uplink *u = attached_uplink(sandbox);
  if (!u) return -1;
  if (u->nsockets == MAX_SOCKETS) return fail("forward", ENOSPC, "too many forwards for one test");
  /* Root: a socket bound to the port holds it for this run (DNAT takes the traffic before it).
   * Hub: a listener (TCP) or the relay's socket (UDP) in the host's namespace, made there by
   * the host-side process. */
  int type = proto == IPPROTO_TCP ? SOCK_STREAM : SOCK_DGRAM;
  int fd = hub_mode ? host_socket(type) : socket(AF_INET, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return fail("socket", errno, "cannot make a socket for the forward");
  /* Not for UDP, where SO_REUSEADDR would let another socket share the port. */
  if (hub_mode && type == SOCK_STREAM) {
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
  if (hub_mode && type == SOCK_DGRAM) {
    /* Each host peer gets a hub socket connected to the test's address:PORT (uplink-udp.c). */
    if (!udp_listener(u, UDP_FORWARD, fd, u->base + 2, (uint16_t)port, 0)) {
      close(fd);
      return fail("forward", ENOMEM, "out of memory");
    }
  } else if (hub_mode) {
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
    *l = (struct listener){{LISTEN_FORWARD, fd}, u->id, u->base + 2, (uint16_t)port, bound, 0};
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

static int cmd_egress(uint32_t sandbox, uint32_t base, uint32_t prefix, uint8_t proto, uint32_t port) {
  struct uplink *u = attached_uplink(sandbox);
  if (!u) return -1;
  char cidr[24];
  snprintf(cidr, sizeof cidr, "%u.%u.%u.%u/%u", base >> 24, (base >> 16) & 255, (base >> 8) & 255, base & 255, prefix);
  char name[IFNAMSIZ];
  outer_name(u->id, name);
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

void run_command(const struct uplink_command *c) {
  struct uplink *u;
  switch (c->op) {
  case OP_REGISTER: cmd_register(c->sandbox, c->pid); break;
  case OP_ATTACH: cmd_attach(c->sandbox, c->id, c->base); break;
  case OP_DETACH:
  case OP_RELEASE:
    /* Both are answered "ok" for a sandbox this helper does not know: there is nothing to undo. */
    u = find_sandbox(c->sandbox);
    if (u && c->op == OP_RELEASE) release(u);
    else if (u && u->has_block) take_down(u);
    reply("ok");
    break;
  case OP_HOSTSERVICE: cmd_hostservice(c->sandbox, c->proto, c->port, c->host_port); break;
  case OP_FORWARD: cmd_forward(c->sandbox, c->proto, c->host_port, c->port); break;
  case OP_EGRESS: cmd_egress(c->sandbox, c->cidr_base, c->cidr_prefix, c->proto, c->port); break;
  }
}

/* At exit: forwarding values this helper changed go back. */
void release_all_forwarding(void) {
  for (int i = 0; i < MAX_UPLINKS; i++)
    if (sandboxes[i] && sandboxes[i]->used) forwarding_unref_all(sandboxes[i]);
}
