/* Per-CPU variables (xen/include/xen/percpu.h, cut down): minixen runs one CPU, so this_cpu()
 * is the variable itself; as in Xen, every per-CPU variable of a file shares one section. */
#ifndef __XEN_PERCPU_H__
#define __XEN_PERCPU_H__

#define NR_CPUS 4

#define DEFINE_PER_CPU(type, name) \
    __section(".bss.percpu") __typeof__(type) per_cpu__##name
#define this_cpu(name) per_cpu__##name

#endif /* __XEN_PERCPU_H__ */
