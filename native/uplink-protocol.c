/*
 * The uplink helper's line protocol, in one place to audit. Its only client
 * is the pool (src/uplink-host.ts), which builds every command from numbers
 * it checked itself; this side checks them again and trusts nothing else.
 *
 * In, on stdin: one command per line, "<request> <command> <args...>", every
 * token separated by one space, every number plain decimal (no sign, no
 * leading zero) within its range, and exactly the tokens a command takes. A
 * line longer than MAX_LINE is refused whole: everything up to its newline
 * goes, and reading goes on with the next line. Control characters are
 * refused.
 *
 * Out, on stdout: one reply per command, "<request> ok[ value]" or
 * "<request> error <step>: <ERRNO>: <message>", so the pool matches replies
 * to requests by number, never by order. A line whose request number cannot
 * be read is answered as request 0.
 *
 * Commands (SANDBOX: the pool's number for a sandbox; the outer interface is
 * vn<ID>, ID = BASE / 4; the /30 at BASE has the gateway BASE+1 outside and
 * the address BASE+2 on eth0 inside):
 *   register SANDBOX PID           PID (the sandbox's launcher) names SANDBOX from now on;
 *                                   its network namespace is opened and checked here, once
 *   attach SANDBOX ID BASE          veth into SANDBOX's network namespace (or up again)
 *   detach SANDBOX                  rules removed, both ends down (veth kept)
 *   release SANDBOX                 the sandbox ended: forget it
 *   hostservice SANDBOX PROTO PORT HOSTPORT   test -> gateway:PORT -> host 127.0.0.1:HOSTPORT
 *   forward SANDBOX PROTO HOSTPORT PORT       host 127.0.0.1:HOSTPORT (0: free) -> address:PORT; replies "ok <hostport>"
 *   egress SANDBOX CIDR [PROTO PORT]          test -> CIDR (port), masqueraded
 */
#define _GNU_SOURCE
#include "uplink-protocol.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* The request being answered: every reply names it. */
static uint32_t current;

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

static void write_line(const char *prefix, const char *fmt, va_list ap) {
  char line[600];
  int p = snprintf(line, sizeof line, "%s", prefix);
  int n = vsnprintf(line + p, sizeof line - 1 - (size_t)p, fmt, ap);
  if (n < 0) return;
  n += p;
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

void reply(const char *fmt, ...) {
  char prefix[16];
  snprintf(prefix, sizeof prefix, "%u ", current);
  va_list ap;
  va_start(ap, fmt);
  write_line(prefix, fmt, ap);
  va_end(ap);
}

void say(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  write_line("", fmt, ap);
  va_end(ap);
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

/* Plain decimal: digits only, no sign or leading zero, at most `max`. */
static int parse_u32(const char *s, uint32_t max, uint32_t *out) {
  if (!s || !*s || strlen(s) > 10 || (s[0] == '0' && s[1])) return -1;
  uint64_t v = 0;
  for (const char *p = s; *p; p++) {
    if (*p < '0' || *p > '9') return -1;
    v = v * 10 + (uint64_t)(*p - '0');
  }
  if (v > max) return -1;
  *out = (uint32_t)v;
  return 0;
}

int parse_cidr(const char *text, int bare, uint32_t *base, uint32_t *prefix) {
  char copy[24];
  if (!text || strlen(text) >= sizeof copy) return -1;
  strcpy(copy, text);
  char *slash = strchr(copy, '/');
  uint32_t p = 32, v = 0;
  if (slash) {
    *slash = '\0';
    if (parse_u32(slash + 1, 32, &p) < 0) return -1;
  } else if (!bare) {
    return -1;
  }
  char *rest = copy;
  for (int i = 0; i < 4; i++) {
    char *part = strsep(&rest, ".");
    uint32_t octet;
    if (!part || parse_u32(part, 255, &octet) < 0) return -1;
    v = v << 8 | octet;
  }
  if (rest) return -1; /* a fifth part */
  uint32_t mask = p ? 0xffffffffu << (32 - p) : 0;
  if (v & ~mask) return -1;
  *base = v;
  *prefix = p;
  return 0;
}

static int parse_proto(const char *s, uint8_t *proto) {
  if (s && strcmp(s, "tcp") == 0) *proto = IPPROTO_TCP;
  else if (s && strcmp(s, "udp") == 0) *proto = IPPROTO_UDP;
  else return -1;
  return 0;
}

static int parse_port(const char *s, int zero_ok, uint32_t *port) {
  return parse_u32(s, 65535, port) < 0 || (*port == 0 && !zero_ok) ? -1 : 0;
}

int parse_command(char *line, struct uplink_command *c) {
  memset(c, 0, sizeof *c);
  current = 0;
  for (const char *p = line; *p; p++)
    if ((unsigned char)*p < 0x20 || *p == 0x7f) return fail("command", EINVAL, "control character in a command line");
  /* Split on single spaces; an empty token (two spaces, a leading or trailing one) is an error. */
  char *argv[8];
  int argc = 0;
  for (char *rest = line; rest && argc < 8;) argv[argc++] = strsep(&rest, " ");
  if (parse_u32(argv[0], UINT32_MAX, &c->request) < 0 || c->request == 0) return fail("command", EINVAL, "bad request number");
  current = c->request;
  for (int i = 0; i < argc; i++)
    if (!*argv[i]) return fail("command", EINVAL, "empty field in a command line");
  if (argc == 8 || argc < 3) return fail("command", EINVAL, "a command line is '<request> <command> <sandbox> ...'");
  const char *what = argv[1];
  argc -= 2; /* what follows the command's name */
  char **arg = argv + 2;
  if (parse_u32(arg[0], MAX_SANDBOX_ID, &c->sandbox) < 0 || c->sandbox == 0) return fail("command", EINVAL, "'%.16s' needs a sandbox number", what);
  if (strcmp(what, "register") == 0 && argc == 2) {
    c->op = OP_REGISTER;
    if (parse_u32(arg[1], 1u << 22, &c->pid) < 0 || c->pid < 2) return fail("command", EINVAL, "usage: register SANDBOX PID");
  } else if (strcmp(what, "attach") == 0 && argc == 3) {
    uint32_t prefix;
    c->op = OP_ATTACH;
    if (parse_u32(arg[1], MAX_UPLINK_ID, &c->id) < 0 || parse_cidr(arg[2], 1, &c->base, &prefix) < 0 || prefix != 32 || c->base >> 2 != c->id)
      return fail("command", EINVAL, "usage: attach SANDBOX ID A.B.C.D (ID: the /30's number, A.B.C.D / 4)");
  } else if (strcmp(what, "detach") == 0 && argc == 1) {
    c->op = OP_DETACH;
  } else if (strcmp(what, "release") == 0 && argc == 1) {
    c->op = OP_RELEASE;
  } else if (strcmp(what, "hostservice") == 0 && argc == 4) {
    c->op = OP_HOSTSERVICE;
    if (parse_proto(arg[1], &c->proto) < 0 || parse_port(arg[2], 0, &c->port) < 0 || parse_port(arg[3], 0, &c->host_port) < 0)
      return fail("command", EINVAL, "usage: hostservice SANDBOX tcp|udp PORT HOSTPORT (ports 1-65535)");
  } else if (strcmp(what, "forward") == 0 && argc == 4) {
    c->op = OP_FORWARD;
    if (parse_proto(arg[1], &c->proto) < 0 || parse_port(arg[2], 1, &c->host_port) < 0 || parse_port(arg[3], 0, &c->port) < 0)
      return fail("command", EINVAL, "usage: forward SANDBOX tcp|udp HOSTPORT PORT (HOSTPORT 0: a free one)");
  } else if (strcmp(what, "egress") == 0 && (argc == 2 || argc == 4)) {
    c->op = OP_EGRESS;
    if (parse_cidr(arg[1], 0, &c->cidr_base, &c->cidr_prefix) < 0) return fail("command", EINVAL, "usage: egress SANDBOX A.B.C.D/N [tcp|udp PORT] (no host bits set)");
    if (argc == 4 && (parse_proto(arg[2], &c->proto) < 0 || parse_port(arg[3], 0, &c->port) < 0))
      return fail("command", EINVAL, "usage: egress SANDBOX A.B.C.D/N [tcp|udp PORT]");
  } else {
    return fail("command", EINVAL, "unknown command or wrong number of arguments: %.16s", what);
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
    if (r->skipping) {
      /* The end of a line that was too long: refused whole, reading goes on after it. */
      r->skipping = 0;
      current = 0;
      fail("command", E2BIG, "a command line longer than %d bytes", MAX_LINE);
    } else {
      on_line(start);
    }
    start = nl + 1;
  }
  r->have -= (size_t)(start - r->buf);
  memmove(r->buf, start, r->have);
  if (r->have == sizeof r->buf - 1) {
    r->skipping = 1; /* no newline in MAX_LINE bytes: not a command */
    r->have = 0;
  }
  return 0;
}
