/*
 * The uplink helper's forwarding state (root): egress needs `forwarding` on
 * the interface its replies arrive on, and several runs may need the same
 * interface at once, so who holds what is recorded under a lock in the state
 * directory (/run/vitest-netns), and the original value goes back when the
 * last holder is gone.
 */
#define _GNU_SOURCE
#include "uplink-internal.h"
#include "uplink-protocol.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

/* A killed helper may stay a zombie for a while (its parent died too): that is dead enough. */
int pid_alive(long pid) {
  char path[64], stat[256];
  snprintf(path, sizeof path, "/proc/%ld/stat", pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (pid <= 0 || fd < 0) return 0;
  ssize_t n = read(fd, stat, sizeof stat - 1);
  close(fd);
  if (n <= 0) return 0;
  stat[n] = '\0';
  const char *state = strrchr(stat, ')'); /* "pid (comm) S ..." */
  return state && state[1] == ' ' && state[2] != 'Z' && state[2] != 'X';
}



/*
 * Replies to egress are only routed if the interface they arrive on
 * forwards. Several runs may need the same interface at once, so the record
 * is shared, in the state directory, under a lock:
 *   orig.<ifname>         the value before the first run that needed it;
 *   held.<ifname>.<pid>   one per helper that needs it now.
 * The value goes back when no live helper holds the interface: at the last
 * release, or, after a helper was killed, when the next helper starts.
 */
struct forwarding {
  char ifname[IFNAMSIZ];
  int refs; /* uplinks of this helper that need it */
};
static struct forwarding forwardings[32];
static int nforwardings;

static int state_lock(void) {
  char path[300];
  snprintf(path, sizeof path, "%s/lock", state_dir);
  int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd >= 0) flock(fd, LOCK_EX);
  return fd;
}
static void state_unlock(int fd) {
  if (fd >= 0) close(fd); /* closing drops the lock */
}

static void state_path(char *out, size_t room, const char *kind, const char *ifname, long pid) {
  if (pid) snprintf(out, room, "%s/%s.%.16s.%ld", state_dir, kind, ifname, pid);
  else snprintf(out, room, "%s/%s.%.16s", state_dir, kind, ifname);
}

/* Under the lock: forgets dead holders; with none left alive, puts the original value back. */
static void restore_if_unheld(const char *ifname) {
  DIR *dir = opendir(state_dir);
  if (!dir) return;
  char prefix[64];
  int held = 0;
  snprintf(prefix, sizeof prefix, "held.%.16s.", ifname);
  struct dirent *e;
  while ((e = readdir(dir))) {
    if (strncmp(e->d_name, prefix, strlen(prefix)) != 0 || strchr(e->d_name + strlen(prefix), '.')) continue;
    long pid = atol(e->d_name + strlen(prefix));
    char path[600];
    snprintf(path, sizeof path, "%s/%s", state_dir, e->d_name);
    if (pid_alive(pid)) held = 1;
    else unlink(path);
  }
  closedir(dir);
  if (held) return;
  char path[300];
  state_path(path, sizeof path, "orig", ifname, 0);
  int value = read_sysctl(path);
  if (value == 0 || value == 1) if_sysctl(ifname, "forwarding", value ? "1" : "0");
  unlink(path);
}

int forwarding_ref(struct uplink *u, const char *ifname) {
  for (int i = 0; i < u->negress_ifs; i++)
    if (strcmp(u->egress_ifs[i], ifname) == 0) return 0;
  if (u->negress_ifs == 16) return ENOSPC;
  struct forwarding *f = NULL;
  for (int i = 0; i < nforwardings && !f; i++)
    if (strcmp(forwardings[i].ifname, ifname) == 0) f = &forwardings[i];
  for (int i = 0; i < nforwardings && !f; i++)
    if (forwardings[i].refs == 0) f = &forwardings[i];
  if (!f) {
    if (nforwardings == 32) return ENOSPC;
    f = &forwardings[nforwardings++];
  }
  if (f->refs == 0) {
    snprintf(f->ifname, IFNAMSIZ, "%s", ifname);
    char path[300], now[128];
    int lock = state_lock();
    state_path(path, sizeof path, "orig", ifname, 0);
    snprintf(now, sizeof now, "/proc/sys/net/ipv4/conf/%.16s/forwarding", ifname);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644); /* only the first holder records it */
    if (fd >= 0) {
      char value[8];
      int n = snprintf(value, sizeof value, "%d\n", read_sysctl(now));
      if (write(fd, value, (size_t)n) < 0) { /* then nothing is restored: the value stays on */ }
      close(fd);
    }
    state_path(path, sizeof path, "held", ifname, (long)getpid());
    fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd >= 0) close(fd);
    int err = if_sysctl(ifname, "forwarding", "1");
    if (err) {
      unlink(path);
      restore_if_unheld(ifname);
    }
    state_unlock(lock);
    if (err) return err;
  }
  f->refs++;
  snprintf(u->egress_ifs[u->negress_ifs++], IFNAMSIZ, "%s", ifname);
  return 0;
}

void forwarding_unref_all(struct uplink *u) {
  for (int j = 0; j < u->negress_ifs; j++)
    for (int i = 0; i < nforwardings; i++) {
      struct forwarding *f = &forwardings[i];
      if (f->refs == 0 || strcmp(f->ifname, u->egress_ifs[j]) != 0 || --f->refs > 0) continue;
      char path[300];
      int lock = state_lock();
      state_path(path, sizeof path, "held", f->ifname, (long)getpid());
      unlink(path);
      restore_if_unheld(f->ifname);
      state_unlock(lock);
    }
  u->negress_ifs = 0;
}

/* Root, at start: values that killed helpers could not put back. */
void reclaim_forwarding(void) {
  int lock = state_lock();
  DIR *dir = opendir(state_dir);
  if (dir) {
    char names[64][IFNAMSIZ];
    int count = 0;
    struct dirent *e;
    while ((e = readdir(dir)) && count < 64)
      if (strncmp(e->d_name, "orig.", 5) == 0 && strlen(e->d_name + 5) < IFNAMSIZ) snprintf(names[count++], IFNAMSIZ, "%s", e->d_name + 5);
    closedir(dir);
    for (int i = 0; i < count; i++) restore_if_unheld(names[i]);
  }
  state_unlock(lock);
}
