/*
 * Shared host ports (share.c): TCP connects from the sandbox to 127.0.0.1,
 * ::1 or ::ffff:127.0.0.1 on a shared port reach the host's loopback.
 */
#ifndef NETNS_SHARE_H
#define NETNS_SHARE_H

#define SHARE_MAX_PORTS 64
/* Uplink host services one sandbox may have at once (the hand-over channel). */
#define SHARE_MAX_SERVICES 64

/* Parses "p1,p2,..." (1..65535, no duplicates). Returns the count, or -1. */
int share_parse_ports(const char *list, unsigned short *ports);

/*
 * Before unshare(CLONE_NEWNET): forks the socket factory, which stays in the
 * host's network namespace and hands out fresh TCP sockets. Returns our end
 * of its socketpair (close-on-exec), or -1 with errno.
 */
int share_start_factory(void);

/*
 * In the program's process, after no_new_privs, before exec: installs the
 * filter, sends its listener over `to`. `with_bind`: bind() notifies too
 * (forwards taken over at bind). Dies on failure.
 */
void share_install_filter(int to, int with_bind);

/* Receives the listener the program sent over `from`. -1 when it sent none. */
int share_receive_listener(int from);

/*
 * Whether this kernel has what sharing needs (seccomp user notification,
 * SECCOMP_IOCTL_NOTIF_ADDFD with SETFD, SO_NETNS_COOKIE). Installs a filter
 * in the calling process: call it in a process that exits right after.
 * 0, or an errno with *why set.
 */
int share_check_kernel(const char **why);

/*
 * The supervisor's loop (init's, whenever the program runs under the connect
 * filter): answers connect() notifications from `listener` and reaps
 * children until `child` exits. `factory` (or -1: no host sockets are made),
 * `ports`: shared host ports. `handover` (or -1): the pool's channel naming
 * the uplink host services to hand over (rootless), one line each way.
 * `host`: the host's network namespace cookie (0: unknown), so sockets of
 * namespaces the sandbox makes itself are told from the host's.
 * Returns child's wait status.
 */
int share_supervise(int listener, int factory, const unsigned short *ports, int nports, int handover, unsigned long long host, pid_t child);

/* The calling process's network namespace cookie (SO_NETNS_COOKIE), or 0. Called before unshare: the host's. */
unsigned long long share_netns_cookie(void);

#endif
