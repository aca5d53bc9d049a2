/*
 * What the parts of the uplink helper (`netns-launch uplink`, see uplink.c)
 * share: the run's state, the uplink and relay records, and each part's
 * entry points. One file per concern, as nsjail splits net/mnt/user:
 *   uplink.c             start-up (root or hub) and the main loop
 *   uplink-protocol.c    command lines in, replies out: the only parser
 *   uplink-commands.c    the commands: sandboxes, attach, detach, rules
 *   uplink-rtnl.c        rtnetlink: veths, addresses, routes, sysctls, setns
 *   uplink-nft.c         the nf_tables batch builder, ruleset and rule shapes
 *   uplink-forwarding.c  root: per-interface forwarding shared across runs
 *   uplink-relay.c       the hub's splice relay and its host-side process
 *   uplink-udp.c         the hub's datagram relay: UDP host services and forwards
 */
#ifndef NETNS_UPLINK_INTERNAL_H
#define NETNS_UPLINK_INTERNAL_H

/* libc's network headers before the kernel's, so the kernel's skip what libc defines. */
#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>

#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "nl.h"

#define MAX_UPLINKS 4096
#define MAX_RULES 64
#define MAX_SOCKETS 16
#define MAX_CONNS 4096
#define UPLINK_MTU 65535

/* ---- the run's state (uplink.c) ---- */

extern int hub_mode;
extern char nft_table[64];
extern uint32_t pool_base, pool_prefix;
extern int nft_fd, rt_fd, own_netns, epoll_fd, factory;
extern struct stat own_net, host_net, own_user;
extern uint32_t nl_seq;
extern const char *state_dir;
extern volatile sig_atomic_t stopping;

struct rule {
  uint64_t handle;
  const char *chain;
};

struct listener;
/* A registered sandbox and its uplink, if it has one. */
struct uplink {
  int used;      /* registered */
  int has_block; /* id and base are set: vn<id> exists */
  int attached;  /* up */
  uint32_t sandbox, id, base;
  pid_t pid;
  int netns_fd; /* the sandbox's network namespace, held from register to release */
  struct rule rules[MAX_RULES];
  int nrules;
  int sockets[MAX_SOCKETS]; /* root: reserved host ports; hub: forward listeners */
  struct listener *listeners[MAX_SOCKETS]; /* hub: what epoll knows those listeners by */
  int nsockets;
  char egress_ifs[16][IFNAMSIZ]; /* root: interfaces whose forwarding this uplink needs */
  int negress_ifs;
};

/* epoll items: stdin, listeners, both sockets of a relayed connection, and the UDP relay's
 * sockets (a listener receiving from many peers, one connected socket per peer: a flow) */
enum kind { STDIN, LISTEN_FORWARD, LISTEN_SERVICE, CONN_SIDE, UDP_FORWARD, UDP_SERVICE, UDP_FLOW };
struct item {
  enum kind kind;
  int fd;
};
struct listener {
  struct item item;
  uint32_t owner;     /* LISTEN_FORWARD, UDP_*: the uplink id */
  uint32_t to_addr;   /* forward: the test's address; service: 127.0.0.1 */
  uint16_t to_port;
  uint16_t host_port; /* LISTEN_SERVICE: the host port it relays to; forwards: the host port it holds */
  uint16_t own_port;  /* LISTEN_SERVICE: the port it listens on in the hub; UDP_SERVICE: the port at the gateway */
};
struct conn;
struct side {
  struct item item;
  struct conn *conn;
  int which;
  uint32_t events; /* what epoll waits for now: changed only when it must be (a syscall each time) */
};

static inline void outer_name(uint32_t id, char name[IFNAMSIZ]) { snprintf(name, IFNAMSIZ, "vn%u", id); }
static inline uint32_t ip_be(uint32_t host) { return htonl(host); }

/* ---- rtnetlink, sysctls, namespaces (uplink-rtnl.c) ---- */

int read_sysctl(const char *path);
int if_sysctl(const char *ifname, const char *key, const char *value);
int ifindex_via(int fd, const char *name);
int link_up(int fd, int index, int up);
int add_address(int fd, int index, uint32_t addr);
int create_veth(const char *name, int netns_fd);
int route_oif(uint32_t addr, char name[IFNAMSIZ]);
int disable_ipv6(int netns_fd, const char *ifname);
int in_netns(int netns_fd, int protocol, int (*fn)(int nl, void *), void *arg);
struct inner_args {
  uint32_t address, gateway;
  int up;
};
int configure_inner(int rt, void *p);
int abort_connections(int diag, void *p);

/* ---- nf_tables (uplink-nft.c) ---- */

int create_ruleset(void);
int add_rule(struct uplink *u, const char *chain, void (*build)(struct msg *, void *), void *arg);
int delete_rules(struct uplink *u);
int set_element(const char *name, int add);
int delete_table(const char *name);
void reclaim_tables(void);
struct rule_args {
  const char *ifname;
  uint32_t match_addr, nat_addr, cidr_prefix;
  uint16_t match_port, nat_port;
  uint8_t proto;
};
void build_service(struct msg *m, void *p);
void build_forward(struct msg *m, void *p);
void build_relayed(struct msg *m, void *p);
void build_egress(struct msg *m, void *p);

/* ---- forwarding on egress interfaces, root (uplink-forwarding.c) ---- */

int pid_alive(long pid);
int forwarding_ref(struct uplink *u, const char *ifname);
void forwarding_unref_all(struct uplink *u);
void reclaim_forwarding(void);

/* ---- the hub's relay (uplink-relay.c) ---- */

/* A socket of `type` (SOCK_STREAM or SOCK_DGRAM) in the host's network namespace, checked. */
int host_socket(int type);
void watch(struct item *item, uint32_t events, int op);
void on_accept(struct listener *l);
void on_conn_event(struct side *side, uint32_t events);
void close_conns_of(uint32_t id);
struct listener *service_listener(uint16_t host_port, int *err);
int run_host_side(pid_t hub, int channel);

/* ---- the hub's datagram relay (uplink-udp.c) ---- */

#define UDP_FLOW_IDLE_MS 60000 /* a flow with no datagram either way for this long is closed */
#define MAX_FLOWS_PER_UPLINK 256
#define MAX_FLOWS 4096
struct listener *udp_listener(struct uplink *u, enum kind kind, int fd, uint32_t to_addr, uint16_t to_port, uint16_t own_port);
void on_udp_listener(struct listener *l);
void on_udp_flow(struct item *item);
void close_flows_of(uint32_t id);
int udp_timeout_ms(void);
void expire_flows(void);

/* ---- commands (uplink-commands.c) ---- */

struct uplink_command;
void run_command(const struct uplink_command *c);
void release_all_forwarding(void);

#endif
