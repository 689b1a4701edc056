/* Domains: a fixed table, created and destroyed by the toolstack through domctl. */
#include <xen/lib.h>
#include <xen/errno.h>
#include <xen/sched.h>

struct domain domain_list[MAX_DOMAINS];
unsigned int nr_domains;
unsigned int opt_dom0_max_vcpus = 4;

static void vcpu_init(struct vcpu *v, unsigned int id)
{
    v->vcpu_id = id;
    v->online = true;
}

static void vcpu_destroy(struct vcpu *v)
{
    v->online = false;
}

struct domain *get_domain_by_id(domid_t domid)
{
    struct domain *d;

    if ( domid >= MAX_DOMAINS )
        return NULL;
    d = &domain_list[domid];
    return domain_exists(d) ? d : NULL;
}

struct domain *domain_create(domid_t domid)
{
    struct domain *d;

    if ( domid >= MAX_DOMAINS || domain_exists(&domain_list[domid]) )
        return NULL;
    d = &domain_list[domid];
    memset(d, 0, sizeof(*d));
    d->domain_id = domid;
    d->flags = DOMF_exists | DOMF_paused;
    d->max_pages = 1024;
    nr_domains++;
    return d;
}

int domain_kill(struct domain *d)
{
    unsigned int i;

    if ( d->domain_id == 0 )
        return -EPERM;
    for ( i = 0; i < d->max_vcpus && i < MAX_VIRT_CPUS; i++ )
        vcpu_destroy(&d->vcpus[i]);
    d->flags = DOMF_dying;
    nr_domains--;
    return 0;
}

int domain_set_max_vcpus(struct domain *d, unsigned int max)
{
    unsigned int i;

    /* The caller has checked the bound; an unchecked one reaches past vcpus[]. */
    if ( WARN_ON(max > MAX_VIRT_CPUS) )
        max = MAX_VIRT_CPUS;
    for ( i = 0; i < max; i++ )
        vcpu_init(&d->vcpus[i], i);
    d->max_vcpus = max;
    return 0;
}

void domain_pause(struct domain *d)
{
    d->flags |= DOMF_paused;
}

void domain_unpause(struct domain *d)
{
    BUG_ON(!domain_exists(d));
    d->flags &= ~DOMF_paused;
}

void __init setup_dom0(void)
{
    struct domain *d = domain_create(0);

    BUG_ON(!d);
    domain_set_max_vcpus(d, opt_dom0_max_vcpus);
    domain_unpause(d);
}
