/* Event channels: the ports a domain signals (xen/common/event_channel.c, cut down). */
#include <xen/lib.h>
#include <xen/errno.h>
#include <xen/event.h>

struct evtchn_stats {
    unsigned long sent;
    unsigned long dropped;
};

static struct evtchn ports[NR_EVTCHN_PORTS];
unsigned int evtchn_bucket_load[EVTCHN_BUCKETS];
struct evtchn_stats evtchn_stats = { 0, 0 };

/* Ports a domain may allocate, per quota class: set at build time, owned by the running system. */
static unsigned int evtchn_quota[4] = { 8, 16, 32, 64 };

static noinline int port_is_valid(unsigned int port)
{
    return port < NR_EVTCHN_PORTS && ports[port].state != ECS_FREE;
}

long evtchn_send(unsigned int port)
{
    if ( !port_is_valid(port) )
    {
        evtchn_stats.dropped++;
        return -EINVAL;
    }
    ports[port].pending = 1;
    evtchn_bucket_load[evtchn_bucket(port)]++;
    evtchn_stats.sent++;
    return 0;
}

static long evtchn_status(unsigned int port)
{
    static unsigned long status_calls;

    status_calls++;
    if ( port >= NR_EVTCHN_PORTS )
        return -EINVAL;
    return ports[port].state | (long)(status_calls & 0xff) << 8;
}

static long evtchn_close(unsigned int port)
{
    if ( !port_is_valid(port) )
        return -EINVAL;
    BUG_ON(ports[port].state == ECS_RESERVED);
    ports[port].state = ECS_FREE;
    ports[port].pending = 0;
    return 0;
}

static long evtchn_bind_vcpu(unsigned int port, unsigned int vcpu)
{
    if ( !port_is_valid(port) )
        return -EINVAL;
    ports[port].notify_vcpu = vcpu;
    return 0;
}

static long evtchn_alloc(unsigned int quota_class)
{
    unsigned int port, limit = evtchn_quota[quota_class & 3];

    for ( port = 1; port < limit && port < NR_EVTCHN_PORTS; port++ )
    {
        if ( ports[port].state == ECS_FREE )
        {
            ports[port].state = ECS_BOUND;
            return port;
        }
    }
    return -ENOSPC;
}

static long evtchn_reset(void)
{
    unsigned int port;

    for ( port = 1; port < NR_EVTCHN_PORTS; port++ )
        ports[port].state = ECS_FREE;
    evtchn_stats.sent = evtchn_stats.dropped = 0;
    return 0;
}

int evtchn_check(unsigned int port)
{
    if ( WARN_ON(port >= NR_EVTCHN_PORTS) )
        return -EINVAL;
    return ports[port].pending;
}

void evtchn_trace(unsigned int port)
{
    printk("evtchn: trace at line %u: port %u\n", __LINE__, port);
}

long do_event_channel_op(int cmd, unsigned int port)
{
    switch ( cmd )
    {
    case EVTCHNOP_send:
        return evtchn_send(port);
    case EVTCHNOP_status:
        return evtchn_status(port);
    case EVTCHNOP_close:
        return evtchn_close(port);
    case EVTCHNOP_unmask:
        return evtchn_fifo_unmask(port);
    case EVTCHNOP_bind_vcpu:
        return evtchn_bind_vcpu(port, port >> 8);
    case EVTCHNOP_reset:
        return evtchn_reset();
    case EVTCHNOP_alloc:
        return evtchn_alloc(port);
    default:
        return -ENOSYS;
    }
}

void evtchn_dump(void)
{
    unsigned int port;

    printk("evtchn: %lu sent, %lu dropped\n", evtchn_stats.sent, evtchn_stats.dropped);
    for ( port = 0; port < NR_EVTCHN_PORTS; port++ )
        if ( ports[port].state != ECS_FREE )
            printk("evtchn: port %u state %u vcpu %u\n", port, ports[port].state, ports[port].notify_vcpu);
}

void __init evtchn_init(void)
{
    unsigned int port;

    for ( port = 0; port < NR_EVTCHN_PORTS; port++ )
        ports[port].state = ECS_FREE;
    ports[0].state = ECS_RESERVED;
}

/* The toolstack resizes a quota class at run time: the table is live state, not a constant. */
long evtchn_set_quota(unsigned int quota_class, unsigned int limit)
{
    if ( quota_class > 3 || limit > NR_EVTCHN_PORTS )
        return -EINVAL;
    evtchn_quota[quota_class] = limit;
    return 0;
}
