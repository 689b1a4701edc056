#ifndef __XEN_TYPES_H__
#define __XEN_TYPES_H__

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef uint16_t domid_t;
typedef long ssize_t;

#endif /* __XEN_TYPES_H__ */
