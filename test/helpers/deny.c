/*
 * deny: run a program under a seccomp filter that refuses what a container
 * profile may refuse. Built two ways (test/helpers.ts):
 *
 * default (deny-userns): new user namespaces, the way Docker's default profile does:
 *   unshare(...)                  -> EPERM (Docker refuses unshare without CAP_SYS_ADMIN)
 *   clone(flags & CLONE_NEWUSER)  -> EPERM
 *   clone3(...)                   -> ENOSYS (so glibc falls back to clone, whose flags can be checked)
 * -DDENY_SECCOMP (deny-seccomp): new seccomp filters, as a profile that blocks
 *   seccomp user notification looks to the launcher:
 *   seccomp(...), prctl(PR_SET_SECCOMP) -> EPERM
 * Everything else is allowed. The filter is inherited by every descendant.
 *
 *   deny-userns PROGRAM [ARG]...     deny-seccomp PROGRAM [ARG]...
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__x86_64__)
#define ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define ARCH AUDIT_ARCH_AARCH64
#else
#error "deny: unsupported architecture"
#endif

#ifndef __NR_clone3
#define __NR_clone3 435
#endif

#define ARG0_LOW offsetof(struct seccomp_data, args[0]) /* little endian: low 32 bits first */

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: deny-userns|deny-seccomp PROGRAM [ARG]...\n");
    return 2;
  }
#ifdef DENY_SECCOMP
  struct sock_filter filter[] = {
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ARCH, 1, 0),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_seccomp, 4, 0),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_prctl, 1, 0),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    /* prctl: only PR_SET_SECCOMP is refused */
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG0_LOW),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, PR_SET_SECCOMP, 0, 1),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
#else
  struct sock_filter filter[] = {
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ARCH, 1, 0),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
    BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x40000000, 8, 0), /* x86 x32 numbers: refuse them all */
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_unshare, 5, 0),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_clone3, 6, 0),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_clone, 1, 0),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    /* clone: refuse only with CLONE_NEWUSER */
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG0_LOW),
    BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, CLONE_NEWUSER, 0, 1),
    /* unshare, clone with CLONE_NEWUSER */
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    /* clone3, x32 */
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (ENOSYS & SECCOMP_RET_DATA)),
  };
#endif
  struct sock_fprog prog = {(unsigned short)(sizeof filter / sizeof filter[0]), filter};
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
    perror("deny: no_new_privs");
    return 126;
  }
  if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) < 0) {
    perror("deny: seccomp");
    return 126;
  }
  execvp(argv[1], argv + 1);
  perror("deny: exec");
  return 127;
}
