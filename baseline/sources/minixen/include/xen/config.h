/* Included first in every translation unit, as Xen's xen/config.h is. */
#ifndef __XEN_CONFIG_H__
#define __XEN_CONFIG_H__

#define MAX_DOMAINS     8
#define MAX_VIRT_CPUS   16
#define CONSOLE_BUF     4096

#include <xen/compiler.h>

#endif /* __XEN_CONFIG_H__ */
