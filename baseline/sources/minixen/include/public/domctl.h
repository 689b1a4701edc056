/* The toolstack's interface to domains, shaped like Xen's public/domctl.h. */
#ifndef __XEN_PUBLIC_DOMCTL_H__
#define __XEN_PUBLIC_DOMCTL_H__

#include <xen/types.h>

#define XEN_DOMCTL_createdomain       1
#define XEN_DOMCTL_destroydomain      2
#define XEN_DOMCTL_pausedomain        3
#define XEN_DOMCTL_unpausedomain      4
#define XEN_DOMCTL_getdomaininfo      5
#define XEN_DOMCTL_max_vcpus          6
#define XEN_DOMCTL_max_mem            7
#define XEN_DOMCTL_settimeoffset      8
#define XEN_DOMCTL_setdomainhandle    9
#define XEN_DOMCTL_getstats          10

struct xen_domctl_getdomaininfo {
    domid_t  domain;
    uint32_t flags;
    uint32_t max_vcpus;
    uint64_t max_pages;
    int64_t  time_offset;
    uint8_t  handle[16];
};

struct xen_domctl {
    uint32_t cmd;
    domid_t  domain;
    union {
        struct { uint32_t max; } max_vcpus;
        struct { uint64_t max_memkb; } max_mem;
        struct { int64_t time_offset_seconds; } settimeoffset;
        struct { uint8_t handle[16]; } setdomainhandle;
        struct xen_domctl_getdomaininfo getdomaininfo;
        struct { uint64_t calls; } getstats;
    } u;
};

#endif /* __XEN_PUBLIC_DOMCTL_H__ */
