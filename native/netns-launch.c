/*
 * netns-launch: start one program inside fresh user, network, mount, PID, UTS
 * and IPC namespaces, with loopback up, a private /tmp, a read-only /proc/sys
 * (and /sys, as root) and a session keyring of its own, in a single process
 * chain and without
 * spawning helper programs (each exec costs 10+ ms on small VMs).
 *
 * Descriptors: the program starts with stdio, Vitest's IPC channel
 * (NODE_CHANNEL_FD), the uplink channel (VITEST_NETNS_UPLINK_FD) and the
 * attempts socket (VITEST_NETNS_FD, made here) only. Everything else the
 * caller left open is closed first thing, before any namespace exists.
 *
 *   netns-launch [--hub PID] [--keep PATH]... [--share[-ro] PATH]... [--tmp-size BYTES] [--noexec] [--file-caps] [--record [--control-fd N]] [--share-ports P,...] [--guard] [--handover-fd N] [--probe] -- PROGRAM [ARG]...
 *   netns-launch uplink ...   (the uplink daemon, see uplink.c)
 *
 * --record counts and rejects traffic to outside addresses in the kernel
 * (attempts.c); the program can ask for the counts over the socket whose fd
 * is in VITEST_NETNS_FD ("attempts\n" -> lines, then "end\n"), and so can
 * the caller over --control-fd N, a socket it passed in (the program does
 * not inherit that one).
 *
 * --file-caps (root only; ignored otherwise): map every uid and gid to itself
 * and keep root's five file capabilities in the sandbox's user namespace
 * (drop_privileges). As root /sys is read-only either way, as /proc/sys is.
 *
 * --hub PID makes the new user namespace a child of PID's user namespace
 * (an uplink hub, uplink.c, owned by the same user) instead of the caller's:
 * root there can then configure this sandbox's network namespace without
 * any privilege on the host. The hub maps the user's id to its 0, so the
 * sandbox maps the user's id to the hub's 0 ("<uid> 0 1") and files keep
 * their owner.
 *
 * Process layout (why three processes):
 *   relay (the pid Vitest sees)  -- forwards signals, exits like the program
 *     └ init (pid 1 of the new PID namespace) -- reaps orphans; when it goes,
 *         the kernel kills everything left in the namespace
 *         └ PROGRAM (the relay's pid, see fork_program; no capabilities, no_new_privs)
 * The program cannot be the direct child of Vitest: a process whose PID
 * namespace for children differs from its own cannot create threads, and
 * Node needs threads. If Vitest dies (even SIGKILL), PR_SET_PDEATHSIG kills
 * the relay's init and with it the whole namespace.
 *
 * --share-ports P,... (share.c): TCP connects in the sandbox to 127.0.0.1, ::1
 * or ::ffff:127.0.0.1 on those ports reach the host's loopback. Adds a
 * socket factory (forked before unshare, so in the host's network namespace,
 * the relay's child) and a seccomp filter on connect() in the program, which
 * init then answers. Without it none of that exists.
 *
 * --guard: the same connect filter (and init answering it) with nothing
 * shared, for sandboxes that may be handed host sockets (netns.listen()):
 * a connect() on one of those is refused (EISCONN), so it can never be
 * turned into a new connection in the host's namespace.
 *
 * --handover-fd N (rootless uplinks): a socket from the caller that only
 * init keeps. The pool names each uplink host service on it ("service
 * GATEWAY PORT HOST_PORT", "clear"); a TCP connect to GATEWAY:PORT then gets
 * a host socket connected to 127.0.0.1:HOST_PORT, as shared ports do,
 * instead of the hub's relay. Implies the filter and the socket factory.
 *
 * Errors before the program starts are printed as one line
 *   netns-launch: <step>: <errno name>: <message>
 * and exit with status 125, so the caller can explain them (see diagnostics).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "attempts.h"
#include "share.h"
#include "uplink.h"

#define SETUP_FAILED 125
#define MAX_KEEP 64

#ifndef SECBIT_NOROOT
#define SECBIT_NOROOT (1 << 0)
#define SECBIT_NOROOT_LOCKED (1 << 1)
#endif
#ifndef KEYCTL_JOIN_SESSION_KEYRING
#define KEYCTL_JOIN_SESSION_KEYRING 1
#endif
/* Highest descriptor number accepted from the environment (the kernel's default fs.nr_open). */
#define MAX_FD_NUMBER 1048575
/* 0-2, Vitest's IPC channel, the uplink channel, --control-fd, --handover-fd. */
#define MAX_KEPT_FDS 7

#ifndef PR_CAP_AMBIENT
#define PR_CAP_AMBIENT 47
#define PR_CAP_AMBIENT_CLEAR_ALL 4
#endif
#ifndef PR_CAP_AMBIENT_RAISE
#define PR_CAP_AMBIENT_RAISE 2
#endif

static const char *step = "start";
/* --share-ports: TCP ports of the host's loopback the sandbox reaches (share.c). */
static unsigned short share_ports[SHARE_MAX_PORTS];
static int share_count;
/* --guard: the connect filter even with nothing shared (host sockets handed in: netns.listen()). */
static int guard;
/* --handover-fd N: the pool names the uplink host services to hand over (rootless); init's alone. */
static int handover_fd = -1;
static const char *keep_paths[MAX_KEEP];
static int keep_count;
/* --share / --share-ro: host paths under /tmp every sandbox sees at the same path. */
static const char *share_paths[MAX_KEEP];
static int share_readonly[MAX_KEEP];
static int share_path_count;

static const char *errno_name(int e) {
  switch (e) {
  case EPERM: return "EPERM";
  case EACCES: return "EACCES";
  case EINVAL: return "EINVAL";
  case ENOSPC: return "ENOSPC";
  case ENOSYS: return "ENOSYS";
  case ENOENT: return "ENOENT";
  case ENOMEM: return "ENOMEM";
  case EUSERS: return "EUSERS";
  case EBUSY: return "EBUSY";
  case ENOTDIR: return "ENOTDIR";
  case ESRCH: return "ESRCH";
  case EROFS: return "EROFS";
  case EDQUOT: return "EDQUOT";
  case EBADF: return "EBADF";
  case ENAMETOOLONG: return "ENAMETOOLONG";
  case E2BIG: return "E2BIG";
  default: return "E?";
  }
}

static void die(const char *what) {
  int e = errno;
  fprintf(stderr, "netns-launch: %s: %s: %s%s%s\n", step, errno_name(e), strerror(e),
          what ? ": " : "", what ? what : "");
  _exit(SETUP_FAILED);
}

static void write_file(const char *path, const char *text) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) die(path);
  size_t len = strlen(text);
  if (write(fd, text, len) != (ssize_t)len) die(path);
  close(fd);
}

/*
 * The identity map of every id our own user namespace has: for each line
 * "inner outer count" of `own` (/proc/self/uid_map before unshare), "inner
 * inner count". On a host that is "0 0 4294967295"; in a container whose root
 * maps 65536 ids, those 65536.
 */
static void write_identity_map(const char *own, const char *target) {
  static char in[8192], out[8192];
  int fd = open(own, O_RDONLY | O_CLOEXEC);
  if (fd < 0) die(own);
  ssize_t n = read(fd, in, sizeof in - 1);
  if (n < 0) die(own);
  close(fd);
  in[n] = '\0';
  size_t len = 0;
  for (char *line = strtok(in, "\n"); line; line = strtok(NULL, "\n")) {
    unsigned long inner, outer, count;
    if (sscanf(line, "%lu %lu %lu", &inner, &outer, &count) != 3) continue;
    len += (size_t)snprintf(out + len, sizeof out - len, "%lu %lu %lu\n", inner, inner, count);
    if (len >= sizeof out) {
      errno = E2BIG;
      die(own);
    }
  }
  write_file(target, out);
}

/*
 * Root, --file-caps: every uid and gid maps to itself, so files of other users
 * keep their owners and chown to any id works; setgroups stays allowed. Only a
 * process with CAP_SETUID in the parent user namespace may write such a map,
 * which the caller no longer is once it unshared: a child forked before
 * unshare() writes it, when told to, into the caller's maps. Returns the pipe
 * that tells it; map_whole_range() finishes. The child shares our memory
 * (clone with CLONE_VM, as posix_spawn does): it copies no page tables, so it
 * costs about a quarter of a fork (0.23 against 0.9 ms measured here), and
 * touches nothing of ours but `step` and its own stack.
 */
static pid_t whole_range_mapper;
static pid_t mapper_parent;
static int mapper_go[2] = {-1, -1};

static int run_mapper(void *unused) {
  (void)unused;
  char c, path[64];
  /* Our own descriptor table (no CLONE_FILES): without this copy of the write end, a caller that dies closes the pipe. */
  close(mapper_go[1]);
  if (read(mapper_go[0], &c, 1) != 1) _exit(SETUP_FAILED); /* the caller gave up */
  snprintf(path, sizeof path, "/proc/%d/uid_map", (int)mapper_parent);
  write_identity_map("/proc/self/uid_map", path);
  step = "gid_map";
  snprintf(path, sizeof path, "/proc/%d/gid_map", (int)mapper_parent);
  write_identity_map("/proc/self/gid_map", path);
  _exit(0);
}

static int start_mapper(void) {
  static char stack[64 * 1024] __attribute__((aligned(16)));
  step = "uid_map";
  if (pipe2(mapper_go, O_CLOEXEC) < 0) die("pipe");
  mapper_parent = getpid();
  whole_range_mapper = clone(run_mapper, stack + sizeof stack, CLONE_VM | SIGCHLD, NULL);
  if (whole_range_mapper < 0) die("clone");
  close(mapper_go[0]);
  return mapper_go[1];
}

static void map_whole_range(int go) {
  int status;
  step = "uid_map";
  if (write(go, "x", 1) != 1) die("pipe");
  close(go);
  while (waitpid(whole_range_mapper, &status, 0) < 0)
    if (errno != EINTR) die("waitpid");
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) _exit(SETUP_FAILED); /* it said why */
}

/* inner ids are the user's own; outer ones are theirs as seen from the parent namespace. */
static void map_ids(uid_t uid, gid_t gid, uid_t outer_uid, gid_t outer_gid) {
  char buf[64];
  step = "setgroups";
  int fd = open("/proc/self/setgroups", O_WRONLY | O_CLOEXEC);
  if (fd >= 0) { /* absent on kernels before 3.19 */
    if (write(fd, "deny", 4) != 4) die("/proc/self/setgroups");
    close(fd);
  }
  step = "uid_map";
  snprintf(buf, sizeof buf, "%u %u 1\n", (unsigned)uid, (unsigned)outer_uid);
  write_file("/proc/self/uid_map", buf);
  step = "gid_map";
  snprintf(buf, sizeof buf, "%u %u 1\n", (unsigned)gid, (unsigned)outer_gid);
  write_file("/proc/self/gid_map", buf);
}

/* The kernel adds 127.0.0.1/8 and ::1 to lo by itself when it goes up. */
static void loopback_up(void) {
  step = "loopback";
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) die("socket");
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  strcpy(ifr.ifr_name, "lo");
  if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0) die("SIOCGIFFLAGS lo");
  ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
  if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0) die("SIOCSIFFLAGS lo");
  close(s);
}

static void write_new_file(const char *path, const char *text) {
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) die(path);
  size_t len = strlen(text);
  if (write(fd, text, len) != (ssize_t)len) die(path);
  close(fd);
}

/* Bind a file over an /etc file read-only, if the target exists. */
static void bind_over(const char *src, const char *target) {
  struct stat st;
  if (stat(target, &st) < 0 || !S_ISREG(st.st_mode)) return; /* nothing to hide */
  if (mount(src, target, NULL, MS_BIND, NULL) < 0) die(target);
  if (mount(NULL, target, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL) < 0)
    die(target);
}

/* The host's /etc/hosts is copied up to this size (whole lines); more is left out, said so in a comment. */
#define HOSTS_MAX (256 * 1024)
static char hosts_text[HOSTS_MAX + 1024];

/* Whether `name` is one of a line's names (not its address, not a comment) in a hosts file. */
static int hosts_has_name(const char *text, const char *name) {
  size_t n = strlen(name);
  for (const char *line = text; *line;) {
    const char *end = strchrnul(line, '\n');
    const char *stop = memchr(line, '#', (size_t)(end - line));
    if (!stop) stop = end;
    int field = 0;
    for (const char *p = line; p < stop;) {
      while (p < stop && (*p == ' ' || *p == '\t' || *p == '\r')) p++;
      const char *word = p;
      while (p < stop && *p != ' ' && *p != '\t' && *p != '\r') p++;
      if (p == word) continue;
      if (field++ > 0 && (size_t)(p - word) == n && strncasecmp(word, name, n) == 0) return 1;
    }
    line = *end ? end + 1 : end;
  }
  return 0;
}

/*
 * The host's /etc/hosts into hosts_text, whole lines, at most HOSTS_MAX bytes;
 * returns the length, 0 when it is missing, unreadable, not a regular file or
 * not text (then the minimal file is used).
 */
static size_t copy_host_hosts(void) {
  int fd = open("/etc/hosts", O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (fd < 0) return 0;
  struct stat st;
  size_t len = 0;
  ssize_t n = 0;
  if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) n = -1;
  while (n >= 0 && len <= HOSTS_MAX && (n = read(fd, hosts_text + len, HOSTS_MAX + 1 - len)) > 0) len += (size_t)n;
  close(fd);
  if (n < 0 || memchr(hosts_text, '\0', len)) return 0;
  if (len > HOSTS_MAX) { /* too long: keep whole lines */
    char *last = memrchr(hosts_text, '\n', HOSTS_MAX);
    len = last ? (size_t)(last - hosts_text) + 1 : 0;
    len += (size_t)snprintf(hosts_text + len, sizeof hosts_text - len,
                            "# vitest-environment-netns: the rest of the host's file (over %d bytes) is left out\n",
                            HOSTS_MAX);
  } else if (len > 0 && hosts_text[len - 1] != '\n') {
    hosts_text[len++] = '\n';
  }
  hosts_text[len] = '\0';
  return len;
}

/*
 * The sandbox's hosts file: the host's, so that names (and the order of
 * `localhost`'s addresses) mean inside what they mean outside, plus only what
 * must be there: a localhost line if the host's file has none, a line for the
 * hostname (kept by the UTS namespace) if it is missing.
 */
static void build_hosts(const char *hostname) {
  size_t len = copy_host_hosts(), room = sizeof hosts_text;
  if (!hosts_has_name(hosts_text, "localhost"))
    len += (size_t)snprintf(hosts_text + len, room - len, "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
  if (!hosts_has_name(hosts_text, hostname)) snprintf(hosts_text + len, room - len, "127.0.1.1\t%s\n", hostname);
}

/*
 * Own resolv.conf, hosts and nsswitch.conf, so that `localhost` resolves from
 * the file and every other name fails at once (a nameserver on our own
 * loopback refuses immediately) instead of waiting on an unreachable server
 * or asking a resolver daemon of the host over a unix socket.
 * The files live on a small tmpfs that is detached again: the bind mounts keep
 * it alive, and nothing of it shows up in /tmp.
 */
static void private_etc(void) {
  char hostname[256] = "localhost";
  step = "etc";
  if (gethostname(hostname, sizeof hostname - 1) < 0 || !hostname[0]) strcpy(hostname, "localhost");
  build_hosts(hostname);
  if (mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=512k,mode=0755") < 0)
    die("staging tmpfs");
  write_new_file("/tmp/hosts", hosts_text);
  write_new_file("/tmp/resolv.conf", "# vitest-environment-netns: no network, names fail fast\n"
                                     "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n");
  write_new_file("/tmp/nsswitch.conf", "# vitest-environment-netns\npasswd: files\ngroup: files\n"
                                       "shadow: files\nhosts: files dns\nnetworks: files\n");
  bind_over("/tmp/hosts", "/etc/hosts");
  bind_over("/tmp/resolv.conf", "/etc/resolv.conf");
  bind_over("/tmp/nsswitch.conf", "/etc/nsswitch.conf");
  if (umount2("/tmp", MNT_DETACH) < 0) die("detach staging tmpfs");
}

/* mkdir -p for the parents of `path`, inside the new /tmp. */
static void make_parents(char *path) {
  for (char *p = path + 5; (p = strchr(p, '/')) != NULL; p++) {
    *p = '\0';
    if (mkdir(path, 0755) < 0 && errno != EEXIST) die(path);
    *p = '/';
  }
}

/*
 * Binds `path` (/tmp/...) of the host's /tmp, reached through a descriptor
 * kept on the old /tmp, at the same path in the new one: the new tmpfs hides
 * it, and a path-based source would resolve into the new tmpfs. A source that
 * is gone is skipped when `missing_ok`, else an error.
 */
static void bind_from_old_tmp(int old_tmp, const char *path, int missing_ok) {
  char src[4200], target[4200];
  const char *rel = path + 5; /* after "/tmp/" */
  struct stat st;
  snprintf(src, sizeof src, "/proc/self/fd/%d/%s", old_tmp, rel);
  if (stat(src, &st) < 0) {
    if (missing_ok) return;
    die(path);
  }
  snprintf(target, sizeof target, "/tmp/%s", rel);
  make_parents(target);
  if (S_ISDIR(st.st_mode)) {
    if (mkdir(target, 0755) < 0 && errno != EEXIST) die(target);
  } else {
    int fd = open(target, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) die(target);
    close(fd);
  }
  if (mount(src, target, NULL, MS_BIND | MS_REC, NULL) < 0) die(path);
}

/* Paths under the host's /tmp that the program needs: the project, a Node binary, Vitest itself. */
static void keep_paths_from(int old_tmp) {
  step = "keep";
  for (int i = 0; i < keep_count; i++) bind_from_old_tmp(old_tmp, keep_paths[i], 1); /* vanished: nothing to keep */
}

/* Remount flags a user namespace may not clear on a bind of the host's mount (the kernel locks them). */
static unsigned long locked_flags(const char *path) {
  struct statvfs sv;
  if (statvfs(path, &sv) < 0) die(path);
  unsigned long flags = 0;
  if (sv.f_flag & ST_NOSUID) flags |= MS_NOSUID;
  if (sv.f_flag & ST_NODEV) flags |= MS_NODEV;
  if (sv.f_flag & ST_NOEXEC) flags |= MS_NOEXEC;
  if (sv.f_flag & ST_NOATIME) flags |= MS_NOATIME;
  if (sv.f_flag & ST_NODIRATIME) flags |= MS_NODIRATIME;
  if (sv.f_flag & ST_RELATIME) flags |= MS_RELATIME;
  return flags;
}

/*
 * Host paths shared on purpose (shareHostPath, hostPaths): bound from the old
 * /tmp like the kept paths, at the same path, and remounted read-only when
 * asked. Unlike a kept path, a share that is gone is an error: the user named it.
 */
static void share_paths_from(int old_tmp) {
  step = "share";
  for (int i = 0; i < share_path_count; i++) {
    const char *target = share_paths[i];
    bind_from_old_tmp(old_tmp, target, 0);
    if (share_readonly[i] &&
        mount(NULL, target, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | locked_flags(target), NULL) < 0)
      die(target);
  }
}

static void private_tmp(const char *size, int noexec) {
  char opts[128];
  step = "tmp";
  int old_tmp = open("/tmp", O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (old_tmp < 0) die("/tmp");
  snprintf(opts, sizeof opts, "mode=1777%s%s", size ? ",size=" : "", size ? size : "");
  if (mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV | (noexec ? MS_NOEXEC : 0), opts) < 0)
    die("tmpfs on /tmp");
  keep_paths_from(old_tmp);
  share_paths_from(old_tmp);
  close(old_tmp);
}

#ifndef MOUNT_ATTR_RDONLY
#define MOUNT_ATTR_RDONLY 0x00000001
#endif
#ifndef AT_RECURSIVE
#define AT_RECURSIVE 0x8000
#endif
struct mount_attr_args {
  unsigned long long attr_set, attr_clr, propagation, userns_fd;
};

/*
 * /sys bound over itself read-only, submounts included (mount_setattr,
 * Linux 5.12; before it, the top mount only). For root: uid 0 owns the host's
 * sysfs knobs (/sys/kernel/mm/…), so even without capabilities it could write
 * them, and with its file capabilities every one.
 */
static void readonly_sys(void) {
  step = "sys";
  struct stat st;
  if (stat("/sys", &st) < 0) return; /* no sysfs: nothing to protect */
  if (mount("/sys", "/sys", NULL, MS_BIND | MS_REC, NULL) < 0) die("bind /sys");
  struct mount_attr_args attr = {MOUNT_ATTR_RDONLY, 0, 0, 0};
  if (syscall(SYS_mount_setattr, AT_FDCWD, "/sys", AT_RECURSIVE, &attr, sizeof attr) == 0) return;
  if (errno != ENOSYS) die("make /sys read-only");
  if (mount(NULL, "/sys", NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | locked_flags("/sys"), NULL) < 0)
    die("remount /sys read-only");
}

static void setup_mounts(const char *tmp_size, int noexec, int sys_readonly) {
  step = "mount";
  /* Nothing we mount may propagate back to the host. */
  if (mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL) < 0) die("make / a slave mount");
  private_etc();
  private_tmp(tmp_size, noexec);
  if (sys_readonly) readonly_sys();
}

/* What root keeps with --file-caps: its powers over files, nothing over the network, mounts or the kernel. */
static const int file_caps_kept[] = {CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER, CAP_FSETID};
#define FILE_CAPS_COUNT (sizeof file_caps_kept / sizeof file_caps_kept[0])

static int kept_cap(int cap, int file_caps) {
  for (size_t i = 0; file_caps && i < FILE_CAPS_COUNT; i++)
    if (file_caps_kept[i] == cap) return 1;
  return 0;
}

/*
 * Everything the program runs with: no capabilities now or after exec; or,
 * with `file_caps` (root, --file-caps), exactly the five file capabilities,
 * permitted, effective, inheritable and ambient (so that programs the test
 * execs, `cp -a` or `tar`, keep them), with the bounding set reduced to them.
 * The noroot securebits stay: uid 0's exec gains nothing beyond the ambient set.
 */
static void drop_privileges(uid_t uid, int file_caps) {
  step = "capabilities";
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) die("no_new_privs");
  if (uid == 0 && prctl(PR_SET_SECUREBITS, SECBIT_NOROOT | SECBIT_NOROOT_LOCKED, 0, 0, 0) < 0)
    die("securebits");
  for (int cap = 0; cap <= 63; cap++)
    if (!kept_cap(cap, file_caps) && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL) die("bounding set");
  prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
  struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
  struct __user_cap_data_struct data[2];
  memset(data, 0, sizeof data);
  for (size_t i = 0; file_caps && i < FILE_CAPS_COUNT; i++) {
    unsigned bit = 1u << (file_caps_kept[i] % 32);
    data[file_caps_kept[i] / 32].permitted |= bit;
    data[file_caps_kept[i] / 32].effective |= bit;
    data[file_caps_kept[i] / 32].inheritable |= bit;
  }
  if (syscall(SYS_capset, &hdr, data) < 0) die("capset");
  for (size_t i = 0; file_caps && i < FILE_CAPS_COUNT; i++)
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, file_caps_kept[i], 0, 0) < 0) die("ambient capabilities");
}

/* Closes descriptors lo..hi (hi may be ~0U: all the rest). */
static void close_span(unsigned lo, unsigned hi) {
  if (lo > hi) return;
  if (syscall(SYS_close_range, lo, hi, 0) == 0) return;
  /* Before Linux 5.9: close what /proc says is open in the span. */
  DIR *dir = opendir("/proc/self/fd");
  if (!dir) {
    for (unsigned fd = lo; fd <= hi && fd <= MAX_FD_NUMBER; fd++) close((int)fd);
    return;
  }
  int open_fds[1024], count;
  do { /* a batch at a time: closing while reading the directory skips entries */
    struct dirent *entry;
    count = 0;
    rewinddir(dir);
    while ((entry = readdir(dir)) != NULL && count < 1024) {
      char *end;
      long fd = strtol(entry->d_name, &end, 10);
      if (*end || entry->d_name[0] < '0' || entry->d_name[0] > '9' || fd == dirfd(dir)) continue;
      if ((unsigned long)fd >= lo && (unsigned long)fd <= hi) open_fds[count++] = (int)fd;
    }
    for (int i = 0; i < count; i++) close(open_fds[i]);
  } while (count == 1024);
  closedir(dir);
}

/* Closes every descriptor from 3 up but those in `keep` (any order, negatives ignored). */
static void close_all_but(const int *keep, int count) {
  unsigned lo = 3;
  for (;;) {
    /* the lowest kept descriptor at or above lo */
    long next = -1;
    for (int i = 0; i < count; i++)
      if (keep[i] >= 0 && (unsigned)keep[i] >= lo && (next < 0 || keep[i] < next)) next = keep[i];
    if (next < 0) break;
    if ((unsigned)next > lo) close_span(lo, (unsigned)next - 1);
    lo = (unsigned)next + 1;
  }
  close_span(lo, ~0U);
}

/*
 * A descriptor number the caller hands over in the environment: digits only,
 * no sign or leading zero, at most MAX_FD_NUMBER. -1 when the variable is unset.
 */
static int env_fd(const char *name) {
  const char *value = getenv(name);
  if (!value) return -1;
  size_t len = strlen(value);
  int ok = len > 0 && len <= 7 && (value[0] != '0' || len == 1);
  for (size_t k = 0; ok && k < len; k++) ok = value[k] >= '0' && value[k] <= '9';
  long fd = ok ? strtol(value, NULL, 10) : -1;
  if (!ok || fd > MAX_FD_NUMBER) {
    step = "descriptors";
    errno = EINVAL;
    char what[160];
    snprintf(what, sizeof what, "%s=%.40s is not a descriptor number (0 to %d); unset it or pass a valid one", name, value,
             MAX_FD_NUMBER);
    die(what);
  }
  return (int)fd;
}

/*
 * First thing, before any namespace exists: close every descriptor the
 * caller left open but stdio and the channels documented for the program
 * (Vitest's IPC channel, the uplink channel) and the relay (--control-fd).
 * A directory fd on the host's /tmp or a pipe inherited from whatever started
 * Vitest would otherwise reach the test and every program it starts.
 */
static void close_inherited_fds(int control) {
  int keep[MAX_KEPT_FDS] = {0, 1, 2, control, env_fd("NODE_CHANNEL_FD"), env_fd("VITEST_NETNS_UPLINK_FD"), handover_fd};
  close_all_but(keep, MAX_KEPT_FDS);
  /* Ours to set (run_init), and only when there is such a socket. */
  unsetenv("VITEST_NETNS_FD");
}

/*
 * Replace stdio with /dev/null and close every other descriptor but `keep`:
 * Vitest's IPC channel and output pipes must close when the program exits,
 * not when a launcher process does.
 */
static void detach_fds(const int *keep, int count) {
  int null = open("/dev/null", O_RDWR | O_CLOEXEC);
  for (int fd = 0; fd < 3; fd++) dup2(null, fd);
  close_all_but(keep, count);
}

static volatile pid_t forward_to;
static void forward_signal(int sig) {
  if (forward_to > 0) kill(forward_to, sig);
}
static const int forwarded[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH, SIGCONT};

static void install_forwarding(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = forward_signal;
  sa.sa_flags = SA_RESTART;
  for (size_t i = 0; i < sizeof forwarded / sizeof forwarded[0]; i++) sigaction(forwarded[i], &sa, NULL);
}

static void reset_signals(void) {
  sigset_t none;
  sigemptyset(&none);
  for (size_t i = 0; i < sizeof forwarded / sizeof forwarded[0]; i++) signal(forwarded[i], SIG_DFL);
  sigprocmask(SIG_SETMASK, &none, NULL);
}

/*
 * A /proc of our own, so pids read there match getpid(), with /proc/sys bound
 * read-only over itself (as bubblewrap does): uid 0 without capabilities
 * still owns most sysctls, and some of them (kernel.hostname before the UTS
 * namespace, the sandbox's own net.*) would otherwise be writable by a test.
 * Some container runtimes forbid a new /proc (masked paths): then theirs stays,
 * with /proc/sys as they mounted it (read-only under Docker and Podman).
 */
static void mount_proc(void) {
  if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0) return;
  const char *was = step;
  step = "proc_sys";
  if (mount("/proc/sys", "/proc/sys", NULL, MS_BIND, NULL) < 0) die("bind /proc/sys");
  if (mount(NULL, "/proc/sys", NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
    die("remount /proc/sys read-only");
  /* As bubblewrap does: root-owned knobs outside /proc/sys (IRQ affinity, sysrq) read-only too. */
  static const char *const knobs[] = {"/proc/irq", "/proc/bus", "/proc/sysrq-trigger"};
  for (size_t i = 0; i < sizeof knobs / sizeof knobs[0]; i++) {
    struct stat st;
    if (stat(knobs[i], &st) < 0) continue;
    if (mount(knobs[i], knobs[i], NULL, MS_BIND | MS_REC, NULL) < 0) die(knobs[i]);
    if (mount(NULL, knobs[i], NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
      die(knobs[i]);
  }
  step = was;
}

/*
 * A fresh, empty session keyring, so that keys in the session keyring Vitest
 * runs in cannot be read by serial from the sandbox (their possessor rights
 * came with the inherited keyring). Kernels without keys (ENOSYS) have none to share.
 */
static void fresh_keyring(void) {
  step = "keyring";
  if (syscall(SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, NULL) < 0 && errno != ENOSYS) die("join a new session keyring");
}

/* clone3's arguments (linux/sched.h, not included: it clashes with <sched.h>). */
struct clone3_args {
  unsigned long long flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid, set_tid_size,
      cgroup;
};

/*
 * Forks the program with `pid` as its pid in this PID namespace (clone3's
 * set_tid; init holds CAP_SYS_ADMIN over the namespace, so this needs no
 * privilege on the host). `pid` is the relay's pid as Vitest sees it: no other
 * process of the host has it while the sandbox lives, so no two sandboxes'
 * programs share a pid, and a pid named file in a shared directory is unique
 * as in a plain run. Later pids here are allocated from 2 up as usual (an
 * explicit pid does not move the kernel's cursor), and skip this one.
 * Without clone3 (before Linux 5.5, or a seccomp profile answering ENOSYS as
 * Docker's does) the program is simply pid 2.
 */
static pid_t fork_program(pid_t pid) {
  step = "fork";
  unsigned long long tid = (unsigned long long)pid;
  struct clone3_args args;
  memset(&args, 0, sizeof args);
  args.exit_signal = SIGCHLD;
  args.set_tid = (unsigned long long)(uintptr_t)&tid;
  args.set_tid_size = 1;
  long child = syscall(SYS_clone3, &args, sizeof args);
  if (child >= 0) return (pid_t)child;
  if (errno != ENOSYS) die("clone3 with the relay's pid (set_tid)");
  return fork();
}

/*
 * pid 1 of the new PID namespace. Never returns. `supervised`: the program
 * runs under the connect filter, answered here; `factory`: the host socket
 * factory (shared ports, host services), or -1.
 */
static void run_init(char **argv, uid_t uid, int file_caps, int status_fd, int relay_alive, int worker_ctl, pid_t program_pid, int supervised, int factory, unsigned long long host_cookie) {
  prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
  /* The relay may have been killed before PDEATHSIG was armed. */
  struct pollfd pfd = {relay_alive, POLLIN, 0};
  if (poll(&pfd, 1, 0) > 0 && (pfd.revents & (POLLHUP | POLLIN))) _exit(SETUP_FAILED);
  close(relay_alive);
  prctl(PR_SET_NAME, "netns-init", 0, 0, 0);

  mount_proc();

  install_forwarding();
  /* Shared ports: the program sends its connect filter's listener back over this. */
  int share_pair[2] = {-1, -1};
  step = "share";
  if (supervised && socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, share_pair) < 0) die("socketpair");
  pid_t child = fork_program(program_pid);
  if (child < 0) die("fork");
  if (child == 0) {
    close(status_fd);
    if (factory >= 0) close(factory);
    if (handover_fd >= 0) close(handover_fd);
    if (supervised) close(share_pair[0]);
    reset_signals();
    if (worker_ctl >= 0) {
      char fd[16];
      snprintf(fd, sizeof fd, "%d", worker_ctl);
      fcntl(worker_ctl, F_SETFD, 0); /* survives exec */
      setenv("VITEST_NETNS_FD", fd, 1);
    }
    drop_privileges(uid, file_caps);
    /* After no_new_privs (seccomp needs it unprivileged), before exec: the whole tree is filtered. */
    if (supervised) share_install_filter(share_pair[1], handover_fd >= 0);
    execvp(argv[0], argv);
    step = "exec";
    die(argv[0]);
  }
  forward_to = child;
  int listener = -1;
  if (supervised) {
    close(share_pair[1]);
    listener = share_receive_listener(share_pair[0]); /* -1: the program failed before exec */
    close(share_pair[0]);
  }
  int keep[4] = {status_fd, listener, factory, handover_fd};
  detach_fds(keep, 4);
  if (listener >= 0) {
    int status = share_supervise(listener, factory, share_ports, share_count, handover_fd, host_cookie, child);
    if (write(status_fd, &status, sizeof status) < 0) { /* relay gone: nothing to tell */ }
    _exit(0);
  }
  for (;;) {
    int status;
    pid_t pid = waitpid(-1, &status, 0);
    if (pid == child) {
      if (write(status_fd, &status, sizeof status) < 0) { /* relay gone: nothing to tell */ }
      _exit(0); /* the kernel now kills whatever is left in the namespace */
    }
    if (pid < 0 && errno != EINTR) _exit(SETUP_FAILED);
  }
}

static int sigchld_pipe[2] = {-1, -1};
static void on_sigchld(int sig) {
  (void)sig;
  int saved = errno;
  if (write(sigchld_pipe[1], "", 1) < 0) { /* already woken */ }
  errno = saved;
}

/* Answers a question about what the program tried to reach. Returns 0 once the asker is gone. */
static int serve_request(int ctl) {
  char request[64];
  ssize_t n = read(ctl, request, sizeof request);
  if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) return 0;
  if (n < 0) return 1;
  static char reply[60000];
  size_t len = attempts_dump(reply, sizeof reply - 8);
  memcpy(reply + len, "end\n", 4);
  len += 4;
  for (size_t off = 0; off < len;) {
    ssize_t w = write(ctl, reply + off, len - off);
    if (w <= 0) return 0;
    off += (size_t)w;
  }
  return 1;
}

/* The process Vitest started: serves attempt queries, waits for init, exits as the program did. */
static int run_relay(pid_t init, int status_fd, int alive_fd, int ctl, int control) {
  forward_to = init;
  install_forwarding();
  int keep[4] = {status_fd, alive_fd}; /* alive_fd open: init's "relay alive" check */
  int kept = 2;
  if (ctl >= 0) keep[kept++] = ctl;
  if (control >= 0) keep[kept++] = control;
  detach_fds(keep, kept);
  if (pipe2(sigchld_pipe, O_CLOEXEC | O_NONBLOCK) < 0) _exit(SETUP_FAILED);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_sigchld;
  sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
  sigaction(SIGCHLD, &sa, NULL);

  int raw = 0;
  for (;;) {
    pid_t done = waitpid(init, &raw, WNOHANG);
    if (done == init) break;
    /* A negative fd is ignored by poll: a closed channel simply drops out. */
    struct pollfd fds[3] = {{sigchld_pipe[0], POLLIN, 0}, {ctl, POLLIN, 0}, {control, POLLIN, 0}};
    if (poll(fds, 3, -1) < 0) continue;
    if (fds[0].revents) {
      char drain[64];
      while (read(sigchld_pipe[0], drain, sizeof drain) > 0) {}
    }
    for (int i = 1; i < 3; i++) {
      int open = !(fds[i].revents & (POLLHUP | POLLERR));
      if (fds[i].revents & POLLIN) open = serve_request(fds[i].fd);
      if (!open) { /* the program (ctl) or the caller (control) is gone */
        if (i == 1) ctl = -1;
        else control = -1;
      }
    }
  }
  int status = 0;
  ssize_t n;
  while ((n = read(status_fd, &status, sizeof status)) < 0 && errno == EINTR) {}
  if (n != (ssize_t)sizeof status) status = raw; /* init itself was killed */
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  int sig = WTERMSIG(status);
  reset_signals();
  signal(sig, SIG_DFL);
  raise(sig);
  return 128 + sig;
}

static void usage(void) {
  fprintf(stderr, "usage: netns-launch [--hub PID] [--keep /tmp/PATH]... [--share[-ro] /tmp/PATH]... [--tmp-size SIZE] [--noexec] [--file-caps] [--record [--control-fd N]] [--share-ports P,...] [--guard] [--handover-fd N] [--probe] -- PROGRAM [ARG]...\n"
                  "       netns-launch uplink (--root | --hub) --pool A.B.C.D/N [--state-dir DIR]\n");
  _exit(2);
}

/*
 * Enter the hub's user namespace (we own it, so setns needs no privilege).
 * Inside it our ids read as 0, which the caller's id maps must account for.
 */
static void enter_hub(const char *pid) {
  char path[64];
  step = "hub";
  snprintf(path, sizeof path, "/proc/%s/ns/user", pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) die(path);
  if (setns(fd, CLONE_NEWUSER) < 0) die("setns into the hub's user namespace");
  close(fd);
}

/* A descriptor number given on the command line: plain decimal, above stdio. */
static int fd_arg(const char *n) {
  char *end;
  long v = strtol(n, &end, 10);
  if (*n < '0' || *n > '9' || *end || v < 3 || v > MAX_FD_NUMBER) usage();
  return (int)v;
}

static int is_pid(const char *s) {
  char *end;
  long v = strtol(s, &end, 10);
  return *s >= '0' && *s <= '9' && *end == '\0' && v > 0 && v < (1L << 22) + 1;
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "uplink") == 0) return uplink_main(argc - 1, argv + 1);
  const char *tmp_size = NULL, *hub = NULL;
  int noexec = 0, probe = 0, record = 0, control = -1, file_caps = 0, i;
  for (i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--") == 0) { i++; break; }
    if (strcmp(argv[i], "--hub") == 0 && i + 1 < argc) {
      hub = argv[++i];
      if (!is_pid(hub)) usage();
    } else if (strcmp(argv[i], "--keep") == 0 && i + 1 < argc) {
      const char *p = argv[++i];
      if (strncmp(p, "/tmp/", 5) != 0 || strstr(p, "/../") || keep_count == MAX_KEEP) usage();
      keep_paths[keep_count++] = p;
    } else if ((strcmp(argv[i], "--share") == 0 || strcmp(argv[i], "--share-ro") == 0) && i + 1 < argc) {
      const char *p = argv[i + 1];
      size_t len = strlen(p);
      if (strncmp(p, "/tmp/", 5) != 0 || len == 5 || strstr(p, "/../") || strstr(p, "/./") || strchr(p, '\n') ||
          (len >= 3 && strcmp(p + len - 3, "/..") == 0) || share_path_count == MAX_KEEP)
        usage();
      share_readonly[share_path_count] = argv[i][7] == '-';
      share_paths[share_path_count++] = p;
      i++;
    } else if (strcmp(argv[i], "--tmp-size") == 0 && i + 1 < argc) {
      tmp_size = argv[++i];
    } else if (strcmp(argv[i], "--file-caps") == 0) {
      file_caps = 1;
    } else if (strcmp(argv[i], "--noexec") == 0) {
      noexec = 1;
    } else if (strcmp(argv[i], "--control-fd") == 0 && i + 1 < argc) {
      control = fd_arg(argv[++i]);
    } else if (strcmp(argv[i], "--handover-fd") == 0 && i + 1 < argc) {
      handover_fd = fd_arg(argv[++i]);
    } else if (strcmp(argv[i], "--guard") == 0) {
      guard = 1;
    } else if (strcmp(argv[i], "--share-ports") == 0 && i + 1 < argc) {
      share_count = share_parse_ports(argv[++i], share_ports);
      if (share_count < 0) usage();
    } else if (strcmp(argv[i], "--record") == 0) {
      record = 1;
    } else if (strcmp(argv[i], "--probe") == 0) {
      probe = 1;
    } else {
      usage();
    }
  }
  if (!probe && i >= argc) usage();
  if (handover_fd >= 0 && handover_fd == control) usage();
  close_inherited_fds(control);
  /* Only init keeps the hand-over channel: not the relay, not the program. */
  if (handover_fd >= 0 && fcntl(handover_fd, F_SETFD, FD_CLOEXEC) < 0) {
    step = "descriptors";
    die("--handover-fd is not an open descriptor");
  }
  /* Only the relay keeps the control socket: not init, not the program. */
  if (control >= 0 && fcntl(control, F_SETFD, FD_CLOEXEC) < 0) {
    step = "descriptors";
    die("--control-fd is not an open descriptor");
  }

  uid_t uid = geteuid();
  gid_t gid = getegid();
  pid_t parent = getppid();
  /* Die with Vitest; if it is already gone, do not start at all. */
  prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
  if (getppid() != parent) _exit(SETUP_FAILED);

  /* Our ids as the parent user namespace of the sandbox sees them. */
  uid_t outer_uid = uid;
  gid_t outer_gid = gid;
  if (hub) {
    enter_hub(hub);
    outer_uid = 0;
    outer_gid = 0;
  }

  /* Root's file powers only for root itself: an ordinary user has one id to map and no capability to keep. */
  if (uid != 0 || hub) file_caps = 0;
  int mapper = file_caps ? start_mapper() : -1;

  /* Made before the network namespace: its sockets are the host's. */
  int factory = -1;
  if (share_count > 0 || handover_fd >= 0) {
    step = "share";
    if ((factory = share_start_factory()) < 0) die("socket factory");
  }

  /* The host's network namespace, as sockets name it: the connect filter tells host sockets by it. */
  unsigned long long host_cookie = share_netns_cookie();

  step = "unshare";
  if (unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC) < 0)
    die("user, net, mount, pid, uts and ipc namespaces");
  if (file_caps) map_whole_range(mapper);
  else map_ids(uid, gid, outer_uid, outer_gid);
  fresh_keyring();
  loopback_up();
  /* Without recording, no route leaves the namespace: connect() fails with ENETUNREACH. */
  int ctl[2] = {-1, -1};
  if (record) {
    const char *why = "";
    int err = attempts_setup(&why);
    char state[200];
    if (err) snprintf(state, sizeof state, "unavailable: %s: %s", why, strerror(err));
    else snprintf(state, sizeof state, "on");
    setenv("VITEST_NETNS_RECORDING", state, 1);
    if (!err && !probe && socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ctl) < 0) die("socketpair");
    if (probe) printf("recording %s\n", state);
  }
  setup_mounts(tmp_size, noexec, uid == 0);

  int status_pipe[2], alive_pipe[2];
  step = "fork";
  pid_t relay = getpid(); /* the pid Vitest sees: the program's pid too (fork_program) */
  if (pipe2(status_pipe, O_CLOEXEC) < 0 || pipe2(alive_pipe, O_CLOEXEC) < 0) die("pipe");
  pid_t init = fork();
  if (init < 0) die("fork");
  if (init == 0) {
    close(status_pipe[0]);
    close(alive_pipe[1]);
    if (control >= 0) close(control); /* the relay's alone */
    if (probe) {
      /* Mount /proc and drop privileges as a real start would, then report. */
      mount_proc();
      drop_privileges(uid, file_caps);
      const char *why = "";
      int err = share_check_kernel(&why);
      if (err) dprintf(1, "sharing unavailable: %s: %s\n", why, strerror(err));
      else dprintf(1, "sharing on\n");
      _exit(0);
    }
    if (ctl[0] >= 0) close(ctl[0]);
    run_init(argv + i, uid, file_caps, status_pipe[1], alive_pipe[0], ctl[1], relay, guard || factory >= 0, factory, host_cookie);
  }
  if (factory >= 0) close(factory); /* init's alone */
  if (handover_fd >= 0) close(handover_fd);
  close(status_pipe[1]);
  close(alive_pipe[0]);
  if (ctl[1] >= 0) close(ctl[1]);
  if (probe) {
    int st;
    while (waitpid(init, &st, 0) < 0 && errno == EINTR) {}
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0) {
      printf("ok\n");
      return 0;
    }
    return SETUP_FAILED;
  }
  if (!record || ctl[0] < 0) control = -1; /* nothing to answer with */
  return run_relay(init, status_pipe[0], alive_pipe[1], ctl[0], control);
}
