/*
 * The uplink helper's line protocol, in one place to audit: commands in on
 * stdin, one per line; replies out on stdout, one per line ("ok[ value]" or
 * "error <step>: <ERRNO>: <message>").
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
#include "uplink-protocol.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char *errno_name(int e) {
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

void reply(const char *fmt, ...) {
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

int fail(const char *step, int err, const char *fmt, ...) {
  char message[300];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(message, sizeof message, fmt, ap);
  va_end(ap);
  reply("error %s: %s: %s", step, errno_name(err), message);
  return -1;
}

int parse_cidr(const char *text, uint32_t *base, uint32_t *prefix) {
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

int parse_command(char *line, struct uplink_command *c) {
  char *argv[8] = {0};
  int argc = 0;
  memset(c, 0, sizeof *c);
  for (char *save = NULL, *tok = strtok_r(line, " \t\r", &save); tok && argc < 8; tok = strtok_r(NULL, " \t\r", &save)) argv[argc++] = tok;
  if (argc == 0) return fail("command", EINVAL, "empty line");
  const char *what = argv[0];
  if (argc < 2 || parse_u32(argv[1], (1u << 30) - 1, &c->id) < 0) return fail("command", EINVAL, "'%s' needs an uplink id", what);
  if (strcmp(what, "attach") == 0 && argc == 4) {
    uint32_t prefix;
    c->op = OP_ATTACH;
    if (parse_u32(argv[2], 1u << 22, &c->pid) < 0 || c->pid < 2 || parse_cidr(argv[3], &c->base, &prefix) < 0 || prefix != 32)
      return fail("command", EINVAL, "usage: attach ID PID A.B.C.D");
  } else if (strcmp(what, "detach") == 0 && argc == 2) {
    c->op = OP_DETACH;
  } else if (strcmp(what, "release") == 0 && argc == 2) {
    c->op = OP_RELEASE;
  } else if (strcmp(what, "hostservice") == 0 && argc == 5) {
    c->op = OP_HOSTSERVICE;
    if (parse_proto(argv[2], &c->proto) < 0 || parse_u32(argv[3], 65535, &c->port) < 0 || c->port == 0 || parse_u32(argv[4], 65535, &c->host_port) < 0 || c->host_port == 0)
      return fail("command", EINVAL, "usage: hostservice ID tcp|udp PORT HOSTPORT (ports 1-65535)");
  } else if (strcmp(what, "forward") == 0 && argc == 5) {
    c->op = OP_FORWARD;
    if (parse_proto(argv[2], &c->proto) < 0 || parse_u32(argv[3], 65535, &c->host_port) < 0 || parse_u32(argv[4], 65535, &c->port) < 0 || c->port == 0)
      return fail("command", EINVAL, "usage: forward ID tcp|udp HOSTPORT PORT (HOSTPORT 0: a free one)");
  } else if (strcmp(what, "egress") == 0 && (argc == 3 || argc == 5)) {
    c->op = OP_EGRESS;
    if (parse_cidr(argv[2], &c->cidr_base, &c->cidr_prefix) < 0) return fail("command", EINVAL, "%s is not an IPv4 block", argv[2]);
    if (argc == 5 && (parse_proto(argv[3], &c->proto) < 0 || parse_u32(argv[4], 65535, &c->port) < 0 || c->port == 0))
      return fail("command", EINVAL, "usage: egress ID CIDR [tcp|udp PORT]");
  } else {
    return fail("command", EINVAL, "unknown command or wrong arguments: %s", what);
  }
  return 0;
}

int read_lines(int fd, struct line_reader *r, void (*on_line)(char *line)) {
  ssize_t n = read(fd, r->buf + r->have, sizeof r->buf - 1 - r->have);
  if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) return -1;
  if (n < 0) return 0;
  r->have += (size_t)n;
  char *start = r->buf, *nl;
  while ((nl = memchr(start, '\n', r->have - (size_t)(start - r->buf)))) {
    *nl = '\0';
    on_line(start);
    start = nl + 1;
  }
  r->have -= (size_t)(start - r->buf);
  memmove(r->buf, start, r->have);
  if (r->have == sizeof r->buf - 1) r->have = 0; /* a line this long is not a command */
  return 0;
}
