/* The uplink helper's line protocol: parsing commands, formatting replies (see uplink-protocol.c). */
#ifndef NETNS_UPLINK_PROTOCOL_H
#define NETNS_UPLINK_PROTOCOL_H

#include <stddef.h>
#include <stdint.h>

enum uplink_op { OP_REGISTER, OP_ATTACH, OP_DETACH, OP_RELEASE, OP_HOSTSERVICE, OP_FORWARD, OP_EGRESS };

#define MAX_SANDBOX_ID 0x7fffffffu
#define MAX_UPLINK_ID ((1u << 30) - 1)

/* One command, every field checked: what a field means depends on `op`. */
struct uplink_command {
  uint32_t request;                /* echoed in the reply */
  enum uplink_op op;
  uint32_t sandbox;                /* a sandbox the pool registered (register: the one it registers) */
  uint32_t pid;                    /* register only: the sandbox's launcher */
  uint32_t id;                     /* attach: the uplink; its outer interface is vn<id>, id = base / 4 */
  uint32_t base;                   /* attach: the /30 (host order) */
  uint8_t proto;                   /* hostservice, forward; egress: 0 for any */
  uint32_t port;                   /* hostservice, forward: the port in the test; egress: 0 for any */
  uint32_t host_port;              /* hostservice: on the host's loopback; forward: 0 for a free one */
  uint32_t cidr_base, cidr_prefix; /* egress */
};

/* Parses one line (changed in place). 0, or -1 after replying the error. */
int parse_command(char *line, struct uplink_command *c);

/* Splits what `fd` has into lines for `on_line`; a line too long is refused whole.
 * Returns 0, or -1 at end of input or on an error. */
#define MAX_LINE 512
struct line_reader {
  char buf[MAX_LINE + 1];
  size_t have;
  int skipping; /* in a line that was too long: everything up to its newline goes */
};
int read_lines(int fd, struct line_reader *r, void (*on_line)(char *line));

/* "a.b.c.d/n" (or, with `bare`, "a.b.c.d" as /32), strictly decimal, no host bits set: 0, or -1. */
int parse_cidr(const char *text, int bare, uint32_t *base, uint32_t *prefix);

const char *errno_name(int e);
/* The reply to the current request: "<request> " and the text. */
void reply(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* A failed command: "<request> error <step>: <ERRNO>: <message>". Returns -1. */
int fail(const char *step, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* A line that is not sent on behalf of a request ("ready <pid>" at start). */
void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
