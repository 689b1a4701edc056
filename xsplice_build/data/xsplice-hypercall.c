/*
 * xsplice-hypercall: issue one hypercall from dom0 through /dev/xen/privcmd and print what Xen
 * returned, as "rc : N" (0 or a negative errno). The VM tier's probes use it to watch a live
 * patch change the hypervisor's answer (patches/NAME/xen-4.17.probe.toml).
 *
 *   xsplice-hypercall iomem-permission DOMID FIRST_MFN NR_MFNS ALLOW
 *       XEN_DOMCTL_iomem_permission (public/domctl.h, interface version 0x15 in Xen 4.17)
 *
 * Built static by xsplice_build/vm/vm_runtime.py and placed in dom0's /bin.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define HYPERCALL_DOMCTL 36                 /* __HYPERVISOR_domctl, public/xen.h */
#define DOMCTL_INTERFACE_VERSION 0x00000015 /* XEN_DOMCTL_INTERFACE_VERSION, Xen 4.17 */
#define DOMCTL_IOMEM_PERMISSION 20          /* XEN_DOMCTL_iomem_permission */

/* Linux's privcmd_hypercall_t (include/uapi/xen/privcmd.h). */
struct privcmd_hypercall {
    uint64_t op;
    uint64_t arg[5];
};
#define IOCTL_PRIVCMD_HYPERCALL _IOC(_IOC_NONE, 'P', 0, sizeof(struct privcmd_hypercall))

/* struct xen_domctl: the header, then a union padded to 128 bytes. */
struct domctl {
    uint32_t cmd;
    uint32_t interface_version;
    uint16_t domain;
    uint16_t pad[3];
    union {
        struct {
            uint64_t first_mfn;
            uint64_t nr_mfns;
            uint8_t allow_access;
        } iomem_permission;
        uint8_t pad[128];
    } u;
};

static unsigned long long number(const char *text)
{
    char *end;
    unsigned long long value = strtoull(text, &end, 0);

    if ( *text == '\0' || *end != '\0' )
    {
        fprintf(stderr, "xsplice-hypercall: %s is not a number\n", text);
        exit(2);
    }
    return value;
}

static long hypercall(uint64_t op, void *argument)
{
    struct privcmd_hypercall call = { .op = op, .arg = { (uint64_t)(uintptr_t)argument } };
    int fd = open("/dev/xen/privcmd", O_RDWR);
    long rc;

    if ( fd < 0 )
    {
        perror("xsplice-hypercall: /dev/xen/privcmd");
        exit(1);
    }
    rc = ioctl(fd, IOCTL_PRIVCMD_HYPERCALL, &call);
    if ( rc < 0 )
        rc = -errno;
    close(fd);
    return rc;
}

int main(int argc, char *argv[])
{
    struct domctl *domctl;

    if ( argc != 6 || strcmp(argv[1], "iomem-permission") )
    {
        fprintf(stderr, "usage: xsplice-hypercall iomem-permission DOMID FIRST_MFN NR_MFNS ALLOW\n");
        return 2;
    }
    /* Xen reads the argument through dom0's page tables: a locked page of its own. */
    domctl = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_LOCKED, -1, 0);
    if ( domctl == MAP_FAILED )
    {
        perror("xsplice-hypercall: mmap");
        return 1;
    }
    memset(domctl, 0, sizeof(*domctl));
    domctl->cmd = DOMCTL_IOMEM_PERMISSION;
    domctl->interface_version = DOMCTL_INTERFACE_VERSION;
    domctl->domain = (uint16_t)number(argv[2]);
    domctl->u.iomem_permission.first_mfn = number(argv[3]);
    domctl->u.iomem_permission.nr_mfns = number(argv[4]);
    domctl->u.iomem_permission.allow_access = (uint8_t)number(argv[5]);
    printf("rc : %ld\n", hypercall(HYPERCALL_DOMCTL, domctl));
    return 0;
}
