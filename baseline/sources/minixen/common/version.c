/* Version information, as xen/common/version.c reports it to `xl info`. */
#include <xen/lib.h>
#include <xen/version.h>

#define XEN_VERSION       1
#define XEN_SUBVERSION    0
#define XEN_EXTRAVERSION  "-unstable"
#define XEN_CHANGESET     "minixen"

/* The linker script brackets the build-id note (xen.lds: .note.gnu.build-id). */
extern const char __note_gnu_build_id_start[], __note_gnu_build_id_end[];

struct elf_note {
    uint32_t namesz, descsz, type;
};

#define NT_GNU_BUILD_ID 3

unsigned int xen_major_version(void)
{
    return XEN_VERSION;
}

unsigned int xen_minor_version(void)
{
    return XEN_SUBVERSION;
}

const char *xen_extra_version(void)
{
    return XEN_EXTRAVERSION;
}

const char *xen_changeset(void)
{
    return XEN_CHANGESET;
}

int xen_build_id(const void **p, unsigned int *len)
{
    const struct elf_note *n = (const void *)__note_gnu_build_id_start;

    if ( __note_gnu_build_id_end - __note_gnu_build_id_start < (long)sizeof(*n) ||
         n->type != NT_GNU_BUILD_ID || n->namesz != 4 )
        return -1;
    *p = (const char *)(n + 1) + ((n->namesz + 3) & ~3u);
    *len = n->descsz;
    return 0;
}
