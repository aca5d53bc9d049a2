/*
 * The hub's datagram relay (rootless): UDP host services and forwards.
 *
 * A listener receives from many peers; each peer gets a flow, a socket of its
 * own connected to the listener's target, and replies read from that socket
 * go back to that peer only, from the listener's address.
 *   UDP_SERVICE  a socket bound at gateway:PORT in the hub (where the test's
 *                uplink routes); flows are host sockets (made by the
 *                host-side process) connected to the host's 127.0.0.1:HOSTPORT,
 *                so the service sees a local client, as with TCP.
 *   UDP_FORWARD  a host socket bound to 127.0.0.1:HOSTPORT (held as TCP
 *                forwards hold theirs); flows are hub sockets connected to
 *                the test's address:PORT.
 * No socket that can send anywhere is ever handed into a sandbox: every host
 * socket here stays in the hub, connected to one address.
 *
 * Bounded: at most MAX_FLOWS_PER_UPLINK flows per uplink and MAX_FLOWS in
 * all (a new peer past either closes the least recently used flow), a flow
 * idle for UDP_FLOW_IDLE_MS is closed, and all of an uplink's flows go with
 * its uplink (close_flows_of, from detach). Nothing is queued here: a
 * datagram that cannot be written at once is dropped, as UDP may.
 */
#define _GNU_SOURCE
#include "uplink-internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Datagrams moved per wake-up of one socket: a busy peer does not starve the loop. */
#define BURST 64

struct flow {
  struct item item; /* UDP_FLOW: the socket connected to the listener's target */
  struct listener *l;
  struct sockaddr_in peer;
  uint64_t last; /* ms, CLOCK_MONOTONIC: the last datagram either way */
};
/* Every flow, packed at the front: scans cost what is in use. */
static struct flow *flows[MAX_FLOWS];
static int nflows;
static uint64_t next_sweep;
/* One datagram at a time: the largest IPv4 UDP payload fits. */
static char datagram[65536];

static uint64_t now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000 + (uint64_t)t.tv_nsec / 1000000;
}

static void flow_close(int index) {
  struct flow *f = flows[index];
  epoll_ctl(epoll_fd, EPOLL_CTL_DEL, f->item.fd, NULL);
  close(f->item.fd);
  free(f);
  flows[index] = flows[--nflows];
  flows[nflows] = NULL;
}

/* The least recently used flow of uplink `owner`, or of all. */
static int least_recent(int any, uint32_t owner) {
  int oldest = -1;
  for (int i = 0; i < nflows; i++)
    if ((any || flows[i]->l->owner == owner) && (oldest < 0 || flows[i]->last < flows[oldest]->last)) oldest = i;
  return oldest;
}

static struct flow *flow_find(struct listener *l, const struct sockaddr_in *peer) {
  for (int i = 0; i < nflows; i++)
    if (flows[i]->l == l && flows[i]->peer.sin_addr.s_addr == peer->sin_addr.s_addr && flows[i]->peer.sin_port == peer->sin_port) return flows[i];
  return NULL;
}

/* A new flow for `peer`: its socket, connected to the listener's target. NULL: the datagram is dropped. */
static struct flow *flow_open(struct listener *l, const struct sockaddr_in *peer) {
  int mine = 0;
  for (int i = 0; i < nflows; i++) mine += flows[i]->l->owner == l->owner;
  if (mine >= MAX_FLOWS_PER_UPLINK) flow_close(least_recent(0, l->owner));
  else if (nflows == MAX_FLOWS) flow_close(least_recent(1, 0));
  int fd = l->item.kind == UDP_SERVICE ? host_socket(SOCK_DGRAM) : socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return NULL;
  struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(l->to_port), .sin_addr.s_addr = ip_be(l->to_addr)};
  struct flow *f = calloc(1, sizeof *f);
  if (!f || connect(fd, (struct sockaddr *)&to, sizeof to) < 0) {
    free(f);
    close(fd);
    return NULL;
  }
  *f = (struct flow){{UDP_FLOW, fd}, l, *peer, now_ms()};
  if (!nflows) next_sweep = f->last + UDP_FLOW_IDLE_MS;
  flows[nflows++] = f;
  watch(&f->item, EPOLLIN, EPOLL_CTL_ADD);
  return f;
}

struct listener *udp_listener(struct uplink *u, enum kind kind, int fd, uint32_t to_addr, uint16_t to_port, uint16_t own_port) {
  struct listener *l = calloc(1, sizeof *l);
  if (!l) return NULL;
  *l = (struct listener){{kind, fd}, u->id, to_addr, to_port, 0, own_port};
  watch(&l->item, EPOLLIN, EPOLL_CTL_ADD);
  u->listeners[u->nsockets] = l;
  u->sockets[u->nsockets++] = fd;
  return l;
}

/* Datagrams from peers: each to its flow (opened on the first one). */
void on_udp_listener(struct listener *l) {
  for (int i = 0; i < BURST; i++) {
    struct sockaddr_in peer;
    socklen_t len = sizeof peer;
    ssize_t n = recvfrom(l->item.fd, datagram, sizeof datagram, MSG_DONTWAIT, (struct sockaddr *)&peer, &len);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (n < 0 || len != sizeof peer || peer.sin_family != AF_INET) continue; /* an ICMP error reported on the socket, say */
    /* A host service's listener takes datagrams from its own test only (the input rule names
     * the interface; this is the second lock): the test's address is the /30's third. */
    if (l->item.kind == UDP_SERVICE && ntohl(peer.sin_addr.s_addr) != l->owner * 4 + 2) continue;
    struct flow *f = flow_find(l, &peer);
    if (!f && !(f = flow_open(l, &peer))) continue;
    f->last = now_ms();
    send(f->item.fd, datagram, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL); /* not written at once: dropped */
  }
}

/* Replies from a flow's target: back to its peer only. */
void on_udp_flow(struct item *item) {
  struct flow *f = (struct flow *)item;
  for (int i = 0; i < BURST; i++) {
    ssize_t n = recv(f->item.fd, datagram, sizeof datagram, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (n < 0) continue; /* ECONNREFUSED: nothing listens there (yet); the peer may try again */
    f->last = now_ms();
    sendto(f->l->item.fd, datagram, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL, (struct sockaddr *)&f->peer, sizeof f->peer);
  }
}

/* Detach: the uplink's flows go (before its listeners, which they name). */
void close_flows_of(uint32_t id) {
  for (int i = nflows - 1; i >= 0; i--)
    if (flows[i]->l->owner == id) flow_close(i);
}

/* How long the main loop may sleep before expire_flows() has work: -1, none. */
int udp_timeout_ms(void) {
  if (!nflows) return -1;
  uint64_t now = now_ms();
  return next_sweep > now ? (int)(next_sweep - now) : 0;
}

/* Closes the flows idle for UDP_FLOW_IDLE_MS, then sleeps until the next one could be. */
void expire_flows(void) {
  uint64_t now = now_ms();
  if (!nflows || now < next_sweep) return;
  uint64_t oldest = now;
  for (int i = nflows - 1; i >= 0; i--) {
    if (now - flows[i]->last >= UDP_FLOW_IDLE_MS) flow_close(i);
    else if (flows[i]->last < oldest) oldest = flows[i]->last;
  }
  next_sweep = oldest + UDP_FLOW_IDLE_MS;
}
