/*
 * The running image's symbol table, by the names Xen's gives its symbols: globals by
 * name, statics as "file#name" where file is the STT_FILE symbol in force. minixen reads
 * it from its own ELF file (/proc/self/exe) the first time a payload needs it.
 */
#include <xen/lib.h>
#include <xen/errno.h>
#include <xen/elfstructs.h>
#include <xen/livepatch.h>
#include <asm/syscall_ext.h>

static const Elf64_Sym *symtab;
static const char *strtab;
static const Elf64_Shdr *shdrs;
static unsigned long nsyms, strtab_size, shnum;

static bool within(unsigned long offset, unsigned long size, unsigned long len)
{
    return offset <= len && size <= len - offset;
}

/* Map our own image read-only and find .symtab and its string table; 0 or -errno. */
static int symbols_init(void)
{
    const Elf64_Ehdr *ehdr;
    const Elf64_Shdr *shdr;
    const unsigned char *image;
    long fd, len;
    unsigned int i;

    if ( symtab )
        return 0;
    fd = sys_open("/proc/self/exe", O_RDONLY | O_CLOEXEC, 0);
    if ( fd < 0 )
        return -ENOENT;
    len = sys_lseek(fd, 0, SEEK_END);
    image = len > 0 ? sys_mmap(0, len, PROT_READ, MAP_PRIVATE, fd, 0) : (void *)-EINVAL;
    sys_close(fd);
    if ( sys_failed((long)image) )
        return -ENOMEM;
    ehdr = (const void *)image;
    if ( !within(0, sizeof(*ehdr), len) || ehdr->e_shentsize != sizeof(*shdr) ||
         !within(ehdr->e_shoff, (unsigned long)ehdr->e_shnum * sizeof(*shdr), len) )
        return -EINVAL;
    shdr = (const void *)(image + ehdr->e_shoff);
    for ( i = 1; i < ehdr->e_shnum; i++ )
    {
        const Elf64_Shdr *str = &shdr[shdr[i].sh_link];

        if ( shdr[i].sh_type != SHT_SYMTAB )
            continue;
        if ( shdr[i].sh_link >= ehdr->e_shnum || shdr[i].sh_entsize != sizeof(Elf64_Sym) ||
             !within(shdr[i].sh_offset, shdr[i].sh_size, len) ||
             !within(str->sh_offset, str->sh_size, len) || !str->sh_size ||
             image[str->sh_offset + str->sh_size - 1] )
            return -EINVAL;
        shdrs = shdr;
        shnum = ehdr->e_shnum;
        strtab = (const char *)image + str->sh_offset;
        strtab_size = str->sh_size;
        nsyms = shdr[i].sh_size / sizeof(Elf64_Sym);
        symtab = (const void *)(image + shdr[i].sh_offset);
        return 0;
    }
    return -ENOENT;
}

/* Does symbol `name` (in `file` when local) answer to the Xen name `wanted`? */
static bool xen_name_matches(const char *file, const char *name, const char *wanted)
{
    if ( file )
    {
        size_t flen = strlen(file);

        if ( memcmp(wanted, file, flen) || wanted[flen] != '#' )
            return false;
        wanted += flen + 1;
    }
    return !strcmp(name, wanted);
}

static const Elf64_Sym *lookup(const char *wanted, int *rc);

/*
 * The one symbol named `wanted`: 0 and its address and size, -ENOENT when there is
 * none, -EEXIST when several answer to the name (a payload must not guess).
 */
int symbols_lookup_by_name(const char *wanted, unsigned long *addr, unsigned long *size)
{
    int rc;
    const Elf64_Sym *sym = lookup(wanted, &rc);

    if ( sym )
    {
        *addr = sym->st_value;
        *size = sym->st_size;
    }
    return rc;
}

extern const char _sinittext[], _einittext[];

/* Is `wanted` one function of the image's text (not data, not the loader's own state)? */
bool symbols_is_code(const char *wanted)
{
    int rc;
    const Elf64_Sym *sym = lookup(wanted, &rc);

    return sym && ELF64_ST_TYPE(sym->st_info) == STT_FUNC && sym->st_shndx < shnum &&
           (shdrs[sym->st_shndx].sh_flags & SHF_EXECINSTR);
}

/* Is `addr` init code (Xen frees it after boot; minixen keeps it, but patches it no more than Xen could)? */
bool symbols_is_init(unsigned long addr)
{
    return addr >= (unsigned long)_sinittext && addr < (unsigned long)_einittext;
}

static const Elf64_Sym *lookup(const char *wanted, int *rc_out)
{
    const Elf64_Sym *one = NULL;
    const char *file = NULL;
    unsigned long i, found = 0;
    int rc = symbols_init();

    *rc_out = rc;
    if ( rc )
        return NULL;
    for ( i = 1; i < nsyms; i++ )
    {
        const Elf64_Sym *sym = &symtab[i];
        const char *name = sym->st_name < strtab_size ? strtab + sym->st_name : "";
        unsigned int type = ELF64_ST_TYPE(sym->st_info);

        if ( type == STT_FILE )
            file = *name ? name : NULL;
        if ( !*name || type == STT_FILE || type == STT_SECTION || sym->st_shndx == SHN_UNDEF )
            continue;
        if ( !xen_name_matches(ELF64_ST_BIND(sym->st_info) == STB_LOCAL ? file : NULL, name, wanted) )
            continue;
        if ( found++ )
        {
            *rc_out = -EEXIST;
            return NULL;
        }
        one = sym;
    }
    *rc_out = found ? 0 : -ENOENT;
    return one;
}
