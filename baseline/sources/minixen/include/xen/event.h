/* Event channels (xen/include/xen/event.h, cut down): ports, and the helper every user inlines. */
#ifndef __XEN_EVENT_H__
#define __XEN_EVENT_H__

#include <xen/types.h>

#define NR_EVTCHN_PORTS 64
#define EVTCHN_BUCKETS  8

#define ECS_FREE     0
#define ECS_RESERVED 1
#define ECS_BOUND    2

#define EVTCHNOP_send      0
#define EVTCHNOP_status    1
#define EVTCHNOP_close     2
#define EVTCHNOP_unmask    3
#define EVTCHNOP_bind_vcpu 4
#define EVTCHNOP_reset     5
#define EVTCHNOP_alloc     6

struct evtchn {
    uint16_t state;
    uint16_t notify_vcpu;
    uint32_t pending;
};

/* Which bucket of the pending counters a port is accounted in. */
static inline unsigned int evtchn_bucket(unsigned int port)
{
    return (port * 5u) % EVTCHN_BUCKETS;
}

long do_event_channel_op(int cmd, unsigned int port);
long evtchn_send(unsigned int port);
long evtchn_fifo_set_pending(unsigned int port);
long evtchn_fifo_unmask(unsigned int port);
void evtchn_dump(void);
void evtchn_init(void);
long evtchn_set_quota(unsigned int quota_class, unsigned int limit);

#endif /* __XEN_EVENT_H__ */
