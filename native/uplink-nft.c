/*
 * The uplink helper's nf_tables part: the batch builder, the run's ruleset
 * (see docs/how-it-works.md for it in nft syntax), the per-test rule shapes
 * (host service, forward, relayed, egress), and reclaiming tables of dead helpers.
 */
#define _GNU_SOURCE
#include "uplink-internal.h"
#include "uplink-protocol.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

static void batch_begin(struct msg *m) {
  size_t b = begin(m, NFNL_MSG_BATCH_BEGIN, 0, AF_UNSPEC, NFNL_SUBSYS_NFTABLES, ++nl_seq);
  end(m, b);
}
static void batch_end(struct msg *m) {
  size_t e = begin(m, NFNL_MSG_BATCH_END, 0, AF_UNSPEC, NFNL_SUBSYS_NFTABLES, ++nl_seq);
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
  size_t c = begin(m, NFT(NFT_MSG_NEWCHAIN), NLM_F_CREATE, NFPROTO_IPV4, 0, ++nl_seq);
  attr_str(m, NFTA_CHAIN_TABLE, nft_table);
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
  size_t r = begin(m, NFT(NFT_MSG_NEWRULE), NLM_F_CREATE | NLM_F_APPEND | flags, NFPROTO_IPV4, 0, ++nl_seq);
  attr_str(m, NFTA_RULE_TABLE, nft_table);
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
int create_ruleset(void) {
  static char buf[32768];
  struct msg m = {buf, 0, sizeof buf, 0};
  batch_begin(&m);
  size_t t = begin(&m, NFT(NFT_MSG_NEWTABLE), NLM_F_CREATE, NFPROTO_IPV4, 0, ++nl_seq);
  attr_str(&m, NFTA_TABLE_NAME, nft_table);
  size_t flags_at = m.len;
  if (!hub_mode) attr_u32(&m, NFTA_TABLE_FLAGS, NFT_TABLE_F_OWNER);
  end(&m, t);

  size_t s = begin(&m, NFT(NFT_MSG_NEWSET), NLM_F_CREATE, NFPROTO_IPV4, 0, ++nl_seq);
  attr_str(&m, NFTA_SET_TABLE, nft_table);
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
  if (hub_mode) {
    /* The hub's own sockets at a gateway (UDP host services): one accept rule each, per test. */
    add_chain(&m, "relayed", 0, 0, NULL);
    r = rule_begin(&m, "input", 0, &exprs);
    if_in_set(&m, 0, 0);
    verdict(&m, NFT_JUMP, "relayed");
    rule_end(&m, r, exprs);
  }
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
int add_rule(struct uplink *u, const char *chain, void (*build)(struct msg *, void *), void *arg) {
  if (u->nrules == MAX_RULES) return ENOSPC;
  char buf[4096];
  struct msg m = {buf, 0, sizeof buf, 0};
  batch_begin(&m);
  size_t exprs, r = rule_begin(&m, chain, NLM_F_ECHO, &exprs);
  uint32_t rule_seq = nl_seq;
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

int delete_rules(struct uplink *u) {
  if (!u->nrules) return 0;
  char buf[8192];
  struct msg m = {buf, 0, sizeof buf, 0};
  batch_begin(&m);
  for (int i = 0; i < u->nrules; i++) {
    size_t r = begin(&m, NFT(NFT_MSG_DELRULE), 0, NFPROTO_IPV4, 0, ++nl_seq);
    attr_str(&m, NFTA_RULE_TABLE, nft_table);
    attr_str(&m, NFTA_RULE_CHAIN, u->rules[i].chain);
    attr_be64(&m, NFTA_RULE_HANDLE, u->rules[i].handle);
    end(&m, r);
  }
  batch_end(&m);
  u->nrules = 0;
  return batch_send(&m, 0, NULL, 0);
}

int set_element(const char *name, int add) {
  char buf[1024];
  struct msg m = {buf, 0, sizeof buf, 0};
  batch_begin(&m);
  size_t e = begin(&m, NFT(add ? NFT_MSG_NEWSETELEM : NFT_MSG_DELSETELEM), add ? NLM_F_CREATE : 0, NFPROTO_IPV4, 0, ++nl_seq);
  attr_str(&m, NFTA_SET_ELEM_LIST_TABLE, nft_table);
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

int delete_table(const char *name) {
  char buf[512];
  struct msg m = {buf, 0, sizeof buf, 0};
  batch_begin(&m);
  size_t t = begin(&m, NFT(NFT_MSG_DELTABLE), 0, NFPROTO_IPV4, 0, ++nl_seq);
  attr_str(&m, NFTA_TABLE_NAME, name);
  end(&m, t);
  batch_end(&m);
  return batch_send(&m, 0, NULL, 0);
}


/* Root: tables of earlier runs whose helper is gone (only without the owner flag can there be any). */
void reclaim_tables(void) {
  char buf[256];
  struct msg m = {buf, 0, sizeof buf, 0};
  size_t g = begin(&m, NFT(NFT_MSG_GETTABLE), NLM_F_DUMP, NFPROTO_IPV4, 0, ++nl_seq);
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

/* ---- per-test rules ---- */

void build_service(struct msg *m, void *p) {
  struct rule_args *a = p;
  if_is(m, 0, a->ifname);
  addr_in(m, 16, a->match_addr, 32);
  l4proto_is(m, a->proto);
  dport_is(m, a->match_port);
  nat(m, NFT_NAT_DNAT, a->nat_addr, a->nat_port);
}
void build_forward(struct msg *m, void *p) {
  struct rule_args *a = p;
  addr_in(m, 16, 0x7f000001, 32);
  l4proto_is(m, a->proto);
  dport_is(m, a->match_port);
  nat(m, NFT_NAT_DNAT, a->nat_addr, a->nat_port);
}
void build_relayed(struct msg *m, void *p) {
  struct rule_args *a = p;
  if_is(m, 0, a->ifname);
  addr_in(m, 16, a->match_addr, 32);
  l4proto_is(m, a->proto);
  dport_is(m, a->match_port);
  accept_verdict(m);
}
void build_egress(struct msg *m, void *p) {
  struct rule_args *a = p;
  if_is(m, 0, a->ifname);
  addr_in(m, 16, a->match_addr, a->cidr_prefix);
  if (a->proto) {
    l4proto_is(m, a->proto);
    dport_is(m, a->match_port);
  }
  accept_verdict(m);
}
