/*
 * session-key: a key in a session keyring of its own, and a reader for it,
 * with raw keyctl/add_key syscalls (no libkeyutils).
 *
 *   session-key add DESCRIPTION PAYLOAD -- PROGRAM [ARG]...
 *       joins a new anonymous session keyring, adds a "user" key to it, and
 *       execs PROGRAM with the key's serial in NETNS_KEY_SERIAL. The keyring
 *       and key go away with the last process that holds the keyring.
 *   session-key read SERIAL
 *       prints the key's payload (exit 0), or the errno name (exit 1).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define KEYCTL_JOIN_SESSION_KEYRING 1
#define KEYCTL_READ 11
#define KEY_SPEC_SESSION_KEYRING -3

static const char *name(int e) {
  switch (e) {
  case EACCES: return "EACCES";
  case ENOKEY: return "ENOKEY";
  case EKEYREVOKED: return "EKEYREVOKED";
  case EPERM: return "EPERM";
  case ENOSYS: return "ENOSYS";
  default: return "E?";
  }
}

int main(int argc, char **argv) {
  if (argc >= 6 && strcmp(argv[1], "add") == 0 && strcmp(argv[4], "--") == 0) {
    if (syscall(SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, NULL) < 0) { perror("session-key: join"); return 2; }
    long serial = syscall(SYS_add_key, "user", argv[2], argv[3], strlen(argv[3]), KEY_SPEC_SESSION_KEYRING);
    if (serial < 0) { perror("session-key: add_key"); return 2; }
    char text[32];
    snprintf(text, sizeof text, "%ld", serial);
    setenv("NETNS_KEY_SERIAL", text, 1);
    execvp(argv[5], argv + 5);
    perror("session-key: exec");
    return 2;
  }
  if (argc == 3 && strcmp(argv[1], "read") == 0) {
    char payload[256];
    long n = syscall(SYS_keyctl, KEYCTL_READ, atol(argv[2]), payload, sizeof payload - 1);
    if (n < 0) {
      printf("%s\n", name(errno));
      return 1;
    }
    payload[n < (long)sizeof payload - 1 ? n : (long)sizeof payload - 1] = '\0';
    printf("%s\n", payload);
    return 0;
  }
  fprintf(stderr, "usage: session-key add DESCRIPTION PAYLOAD -- PROGRAM [ARG]... | session-key read SERIAL\n");
  return 2;
}
