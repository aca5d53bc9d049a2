/* Counting and rejecting traffic to outside addresses (see attempts.c). */
#ifndef NETNS_ATTEMPTS_H
#define NETNS_ATTEMPTS_H
#include <stddef.h>

/* Installs routes and the nf_tables ruleset in the current network namespace.
 * Returns 0, or an errno value with *why naming the step that failed. */
int attempts_setup(const char **why);

/* Writes "<proto> <address> <port> <packets>\n" lines for every destination
 * seen so far into out; returns the bytes written. */
size_t attempts_dump(char *out, size_t room);

#endif
