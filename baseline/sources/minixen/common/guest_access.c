/* Hypercall arguments read from guest memory: each read has its exception-table entry. */
#include <xen/lib.h>
#include <xen/errno.h>
#include <asm/uaccess.h>

long guest_read_port(const uint32_t *arg)
{
    uint32_t port = read_guest_u32(arg);

    return port < 64 ? (long)port : -EINVAL;
}

long guest_read_vcpu(const uint32_t *arg)
{
    uint32_t vcpu = read_guest_u32(arg);

    return vcpu < 16 ? (long)vcpu : -EINVAL;
}
