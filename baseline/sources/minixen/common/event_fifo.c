/* The FIFO event channel ABI's pending queue (xen/common/event_fifo.c, cut down). */
#include <xen/lib.h>
#include <xen/errno.h>
#include <xen/event.h>

static unsigned int fifo_queue[EVTCHN_BUCKETS];
static unsigned int fifo_masked[EVTCHN_BUCKETS];

long evtchn_fifo_set_pending(unsigned int port)
{
    if ( port >= NR_EVTCHN_PORTS )
        return -EINVAL;
    fifo_queue[evtchn_bucket(port)] |= 1u << (port & 31);
    return 0;
}

long evtchn_fifo_unmask(unsigned int port)
{
    if ( port >= NR_EVTCHN_PORTS )
        return -EINVAL;
    fifo_masked[evtchn_bucket(port)] &= ~(1u << (port & 31));
    return 0;
}

unsigned int evtchn_fifo_pending_count(void)
{
    unsigned int bucket, count = 0;

    for ( bucket = 0; bucket < EVTCHN_BUCKETS; bucket++ )
        count += (fifo_queue[bucket] & ~fifo_masked[bucket]) != 0;
    return count;
}
