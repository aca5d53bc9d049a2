/* The uplink daemon: `netns-launch uplink ...` (see uplink.c). */
#ifndef NETNS_UPLINK_H
#define NETNS_UPLINK_H

/* argv[0] is "uplink". Returns the exit status. */
int uplink_main(int argc, char **argv);

#endif
