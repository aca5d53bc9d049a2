/* The uplink helper's line protocol: parsing commands, formatting replies (see uplink-protocol.c). */
#ifndef NETNS_UPLINK_PROTOCOL_H
#define NETNS_UPLINK_PROTOCOL_H

#include <stddef.h>
#include <stdint.h>

enum uplink_op { OP_ATTACH, OP_DETACH, OP_RELEASE, OP_HOSTSERVICE, OP_FORWARD, OP_EGRESS };

/* One command, every field checked: what a field means depends on `op`. */
struct uplink_command {
  enum uplink_op op;
  uint32_t id;                     /* the uplink: its outer interface is vn<id> */
  uint32_t pid;                    /* attach: a process in the sandbox's network namespace */
  uint32_t base;                   /* attach: the /30 (host order) */
  uint8_t proto;                   /* hostservice, forward; egress: 0 for any */
  uint32_t port;                   /* hostservice, forward: the port in the test; egress: 0 for any */
  uint32_t host_port;              /* hostservice: on the host's loopback; forward: 0 for a free one */
  uint32_t cidr_base, cidr_prefix; /* egress */
};

/* Parses one line (changed in place). 0, or -1 after replying the error. */
int parse_command(char *line, struct uplink_command *c);

/* Splits what `fd` has into lines for `on_line`. Returns 0, or -1 at end of input or on an error. */
struct line_reader {
  char buf[4096];
  size_t have;
};
int read_lines(int fd, struct line_reader *r, void (*on_line)(char *line));

/* "a.b.c.d/n" (or a bare address, as /32) with no host bits set: 0, or -1. */
int parse_cidr(const char *text, uint32_t *base, uint32_t *prefix);

const char *errno_name(int e);
/* One reply line. */
void reply(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* A failed command: "error <step>: <ERRNO>: <message>". Returns -1. */
int fail(const char *step, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
