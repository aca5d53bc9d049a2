/*
 * A tiny netlink message builder and reader, shared by attempts.c (the
 * recording ruleset) and the uplink helper (uplink-*.c: veths, addresses,
 * routes, NAT), with the one other thing both need: writing a sysctl.
 *
 * Messages are appended to a fixed buffer; nothing is allocated. A message
 * or attribute that does not fit sets `overflow` instead of writing past the
 * end, and the caller checks it once before sending. nf_tables expressions
 * are written the way nft(8) writes them, so `nft list` prints them back as
 * ordinary rules.
 */
#ifndef NETNS_NL_H
#define NETNS_NL_H

#include <arpa/inet.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netlink.h>
#include <stdint.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

struct msg {
  char *buf;
  size_t len, cap;
  int overflow;
};

static inline void *put(struct msg *m, const void *data, size_t len) {
  size_t aligned = NLMSG_ALIGN(len);
  if (m->len + aligned > m->cap) {
    m->overflow = 1;
    return NULL;
  }
  void *at = m->buf + m->len;
  memset(at, 0, aligned);
  if (data) memcpy(at, data, len);
  m->len += aligned;
  return at;
}

static inline size_t attr(struct msg *m, uint16_t type, const void *data, size_t len) {
  struct nlattr a = {(uint16_t)(NLA_HDRLEN + len), type};
  size_t at = m->len;
  put(m, &a, sizeof a);
  if (len) put(m, data, len);
  return at;
}
static inline void attr_str(struct msg *m, uint16_t type, const char *s) { attr(m, type, s, strlen(s) + 1); }
/* nf_tables numbers are big-endian on the wire... */
static inline void attr_u32(struct msg *m, uint16_t type, uint32_t host) {
  uint32_t be = htonl(host);
  attr(m, type, &be, sizeof be);
}
static inline void attr_be64(struct msg *m, uint16_t type, uint64_t host) {
  uint8_t be[8];
  for (int i = 0; i < 8; i++) be[i] = (uint8_t)(host >> (56 - 8 * i));
  attr(m, type, be, sizeof be);
}
/* ...rtnetlink numbers are in host order. */
static inline void attr_host32(struct msg *m, uint16_t type, uint32_t value) { attr(m, type, &value, sizeof value); }
static inline size_t nest(struct msg *m, uint16_t type) { return attr(m, type | NLA_F_NESTED, NULL, 0); }
static inline void nest_end(struct msg *m, size_t at) {
  if (!m->overflow) ((struct nlattr *)(m->buf + at))->nla_len = (uint16_t)(m->len - at);
}

/* A bare netlink header; the caller appends the family header (ifinfomsg, ...). */
static inline size_t nl_begin(struct msg *m, uint16_t type, uint16_t flags, uint32_t seq) {
  struct nlmsghdr h = {0, type, (uint16_t)(NLM_F_REQUEST | flags), seq, 0};
  size_t at = m->len;
  put(m, &h, sizeof h);
  return at;
}
/* An nfnetlink message: netlink header plus nfgenmsg. */
static inline size_t begin(struct msg *m, uint16_t type, uint16_t flags, uint8_t family, uint16_t res_id, uint32_t seq) {
  struct nfgenmsg g = {family, NFNETLINK_V0, htons(res_id)};
  size_t at = nl_begin(m, type, flags, seq);
  put(m, &g, sizeof g);
  return at;
}
static inline void end(struct msg *m, size_t at) {
  if (!m->overflow) ((struct nlmsghdr *)(m->buf + at))->nlmsg_len = (uint32_t)(m->len - at);
}
#define NFT(type) ((NFNL_SUBSYS_NFTABLES << 8) | (type))

/* ---- nf_tables expressions ---- */

struct expr {
  size_t elem, data;
};
static inline struct expr expr_begin(struct msg *m, const char *name) {
  struct expr e;
  e.elem = nest(m, NFTA_LIST_ELEM);
  attr_str(m, NFTA_EXPR_NAME, name);
  e.data = nest(m, NFTA_EXPR_DATA);
  return e;
}
static inline void expr_end(struct msg *m, struct expr e) {
  nest_end(m, e.data);
  nest_end(m, e.elem);
}
static inline void meta(struct msg *m, uint32_t key, uint32_t reg) {
  struct expr e = expr_begin(m, "meta");
  attr_u32(m, NFTA_META_KEY, key);
  attr_u32(m, NFTA_META_DREG, reg);
  expr_end(m, e);
}
static inline void cmp(struct msg *m, uint32_t reg, uint32_t op, const void *data, size_t len) {
  struct expr e = expr_begin(m, "cmp");
  attr_u32(m, NFTA_CMP_SREG, reg);
  attr_u32(m, NFTA_CMP_OP, op);
  size_t d = nest(m, NFTA_CMP_DATA);
  attr(m, NFTA_DATA_VALUE, data, len);
  nest_end(m, d);
  expr_end(m, e);
}
static inline void cmp_u8(struct msg *m, uint32_t reg, uint8_t value) { cmp(m, reg, NFT_CMP_EQ, &value, 1); }
static inline void payload(struct msg *m, uint32_t base, uint32_t offset, uint32_t len, uint32_t reg) {
  struct expr e = expr_begin(m, "payload");
  attr_u32(m, NFTA_PAYLOAD_DREG, reg);
  attr_u32(m, NFTA_PAYLOAD_BASE, base);
  attr_u32(m, NFTA_PAYLOAD_OFFSET, offset);
  attr_u32(m, NFTA_PAYLOAD_LEN, len);
  expr_end(m, e);
}
/* reg = (reg & mask) ^ 0, as nft writes a prefix or flag test. */
static inline void bitwise_and(struct msg *m, uint32_t reg, const void *mask, size_t len) {
  static const uint8_t zero[16];
  struct expr e = expr_begin(m, "bitwise");
  attr_u32(m, NFTA_BITWISE_SREG, reg);
  attr_u32(m, NFTA_BITWISE_DREG, reg);
  attr_u32(m, NFTA_BITWISE_LEN, (uint32_t)len);
  size_t d = nest(m, NFTA_BITWISE_MASK);
  attr(m, NFTA_DATA_VALUE, mask, len);
  nest_end(m, d);
  d = nest(m, NFTA_BITWISE_XOR);
  attr(m, NFTA_DATA_VALUE, zero, len);
  nest_end(m, d);
  expr_end(m, e);
}
/* Loads a constant into a register (NAT addresses and ports). */
static inline void immediate(struct msg *m, uint32_t reg, const void *data, size_t len) {
  struct expr e = expr_begin(m, "immediate");
  attr_u32(m, NFTA_IMMEDIATE_DREG, reg);
  size_t d = nest(m, NFTA_IMMEDIATE_DATA);
  attr(m, NFTA_DATA_VALUE, data, len);
  nest_end(m, d);
  expr_end(m, e);
}
/* accept, drop, or (with a chain name) jump. */
static inline void verdict(struct msg *m, int code, const char *chain) {
  struct expr e = expr_begin(m, "immediate");
  attr_u32(m, NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
  size_t d = nest(m, NFTA_IMMEDIATE_DATA);
  size_t v = nest(m, NFTA_DATA_VERDICT);
  attr_u32(m, NFTA_VERDICT_CODE, (uint32_t)code);
  if (chain) attr_str(m, NFTA_VERDICT_CHAIN, chain);
  nest_end(m, v);
  nest_end(m, d);
  expr_end(m, e);
}
static inline void accept_verdict(struct msg *m) { verdict(m, NF_ACCEPT, NULL); }
static inline void counter_expr(struct msg *m, uint16_t type) {
  size_t c = nest(m, type);
  attr_str(m, NFTA_EXPR_NAME, "counter");
  size_t d = nest(m, NFTA_EXPR_DATA);
  nest_end(m, d);
  nest_end(m, c);
}
static inline void reject(struct msg *m, uint32_t type, uint8_t code) {
  struct expr e = expr_begin(m, "reject");
  attr_u32(m, NFTA_REJECT_TYPE, type);
  attr(m, NFTA_REJECT_ICMP_CODE, &code, 1);
  expr_end(m, e);
}
/* Is reg in the named set (or, with invert, not in it)? */
static inline void lookup(struct msg *m, const char *set, uint32_t set_id, uint32_t reg, int invert) {
  struct expr e = expr_begin(m, "lookup");
  attr_str(m, NFTA_LOOKUP_SET, set);
  attr_u32(m, NFTA_LOOKUP_SET_ID, set_id);
  attr_u32(m, NFTA_LOOKUP_SREG, reg);
  if (invert) attr_u32(m, NFTA_LOOKUP_FLAGS, NFT_LOOKUP_F_INV);
  expr_end(m, e);
}
static inline void ct_load(struct msg *m, uint32_t key, uint32_t reg) {
  struct expr e = expr_begin(m, "ct");
  attr_u32(m, NFTA_CT_KEY, key);
  attr_u32(m, NFTA_CT_DREG, reg);
  expr_end(m, e);
}
static inline void masquerade(struct msg *m) {
  struct expr e = expr_begin(m, "masq");
  expr_end(m, e);
}

/* A bound netlink socket of `protocol` (NETLINK_ROUTE, NETLINK_NETFILTER) in the current network namespace. */
static inline int netlink_socket(int protocol) {
  int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, protocol);
  if (fd < 0) return -1;
  struct sockaddr_nl sa = {.nl_family = AF_NETLINK};
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
    close(fd);
    return -1;
  }
  return fd;
}

/* Writes a /proc/sys value (sysctls of the calling process's network namespace): 0 or an errno. */
static inline int write_sysctl(const char *path, const char *value) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return errno;
  int err = write(fd, value, strlen(value)) < 0 ? errno : 0;
  close(fd);
  return err;
}

/* ---- reading replies ---- */

static inline struct nlattr *find(struct nlattr *first, size_t len, uint16_t type) {
  for (struct nlattr *a = first; len >= NLA_HDRLEN && a->nla_len >= NLA_HDRLEN && a->nla_len <= len;) {
    if ((a->nla_type & NLA_TYPE_MASK) == type) return a;
    size_t step = NLA_ALIGN(a->nla_len);
    if (step >= len) break;
    len -= step;
    a = (struct nlattr *)((char *)a + step);
  }
  return NULL;
}
#define NLA_PAYLOAD_OF(a) ((void *)((char *)(a) + NLA_HDRLEN))
#define NLA_LEN_OF(a) ((size_t)(a)->nla_len - NLA_HDRLEN)

/* The attributes of a message whose family header is `header` bytes long. */
static inline struct nlattr *msg_attrs(struct nlmsghdr *h, size_t header, size_t *len) {
  size_t start = NLMSG_LENGTH(NLMSG_ALIGN(header));
  *len = h->nlmsg_len > start ? h->nlmsg_len - start : 0;
  return (struct nlattr *)((char *)h + start);
}

static inline uint64_t be64(const void *p) {
  const uint8_t *b = p;
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v = v << 8 | b[i];
  return v;
}

/* ---- rtnetlink requests ---- */

/*
 * Sends one request and reads until its answer: an error or ack (returned as
 * 0 or an errno), or, when `type` is given, the first message of that type,
 * copied to `reply`.
 */
static inline int rt_request(int fd, struct msg *m, uint16_t type, char *reply, size_t room) {
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

#endif
