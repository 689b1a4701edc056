#ifndef __XEN_VERSION_H__
#define __XEN_VERSION_H__

#include <xen/types.h>

unsigned int xen_major_version(void);
unsigned int xen_minor_version(void);
const char *xen_extra_version(void);
const char *xen_changeset(void);
int xen_build_id(const void **p, unsigned int *len);

#endif /* __XEN_VERSION_H__ */
