#ifndef __XEN_SCHED_H__
#define __XEN_SCHED_H__

#include <xen/types.h>

#define DOMF_exists   (1u << 0)
#define DOMF_paused   (1u << 1)
#define DOMF_dying    (1u << 2)

struct vcpu {
    unsigned int vcpu_id;
    bool online;
};

struct domain {
    domid_t domain_id;
    uint32_t flags;
    uint32_t max_vcpus;
    uint64_t max_pages;
    int64_t time_offset;
    uint8_t handle[16];
    struct vcpu vcpus[MAX_VIRT_CPUS];
};

extern struct domain domain_list[MAX_DOMAINS];
extern unsigned int nr_domains;

static inline bool domain_exists(const struct domain *d)
{
    return d && (d->flags & DOMF_exists);
}

static inline bool domain_is_paused(const struct domain *d)
{
    return d->flags & DOMF_paused;
}

struct domain *get_domain_by_id(domid_t domid);
struct domain *domain_create(domid_t domid);
int domain_kill(struct domain *d);
int domain_set_max_vcpus(struct domain *d, unsigned int max);
void domain_pause(struct domain *d);
void domain_unpause(struct domain *d);

#endif /* __XEN_SCHED_H__ */
