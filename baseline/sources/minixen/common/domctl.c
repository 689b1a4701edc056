/* domctl: the toolstack's operations on a domain (xen/common/domctl.c). */
#include <xen/lib.h>
#include <xen/errno.h>
#include <xen/sched.h>
#include <public/domctl.h>

static void getdomaininfo(const struct domain *d, struct xen_domctl_getdomaininfo *info)
{
    info->domain = d->domain_id;
    info->flags = d->flags;
    info->max_vcpus = d->max_vcpus;
    info->max_pages = d->max_pages;
    info->time_offset = d->time_offset;
    memcpy(info->handle, d->handle, sizeof(info->handle));
}

static int set_max_mem(struct domain *d, uint64_t max_memkb)
{
    uint64_t pages = max_memkb >> 2;

    if ( pages == 0 )
        return -EINVAL;
    d->max_pages = pages;
    return 0;
}

long do_domctl(struct xen_domctl *op)
{
    static unsigned long domctl_count;
    struct domain *d = NULL;
    long ret = 0;

    domctl_count++;

    if ( op->cmd != XEN_DOMCTL_createdomain && op->cmd != XEN_DOMCTL_getstats )
    {
        d = get_domain_by_id(op->domain);
        if ( !d )
            return -ESRCH;
    }

    switch ( op->cmd )
    {
    case XEN_DOMCTL_createdomain:
        d = domain_create(op->domain);
        ret = d ? 0 : -EEXIST;
        break;

    case XEN_DOMCTL_destroydomain:
        ret = domain_kill(d);
        break;

    case XEN_DOMCTL_pausedomain:
        if ( domain_is_paused(d) )
            ret = -EBUSY;
        else
            domain_pause(d);
        break;

    case XEN_DOMCTL_unpausedomain:
        domain_unpause(d);
        break;

    case XEN_DOMCTL_getdomaininfo:
        getdomaininfo(d, &op->u.getdomaininfo);
        break;

    case XEN_DOMCTL_max_vcpus:
        ret = domain_set_max_vcpus(d, op->u.max_vcpus.max);
        break;

    case XEN_DOMCTL_max_mem:
        ret = set_max_mem(d, op->u.max_mem.max_memkb);
        break;

    case XEN_DOMCTL_settimeoffset:
        d->time_offset = op->u.settimeoffset.time_offset_seconds;
        break;

    case XEN_DOMCTL_getstats:
        op->u.getstats.calls = domctl_count;
        break;

    case XEN_DOMCTL_setdomainhandle:
        memcpy(d->handle, op->u.setdomainhandle.handle, sizeof(d->handle));
        break;

    default:
        ret = -ENOSYS;
        break;
    }

    return ret;
}
