/*
 * Parsing and linking a payload (xen/common/livepatch_elf.c): every offset and size in
 * the file is checked against the file before use, with Xen's rules and error codes.
 */
#include <xen/lib.h>
#include <xen/errno.h>
#include <xen/livepatch.h>

#define MAX_SECTIONS 1024

static bool in_file(const struct livepatch_elf *elf, uint64_t offset, uint64_t size)
{
    return offset <= elf->len && size <= elf->len - offset;
}

const struct livepatch_elf_sec *livepatch_elf_sec_by_name(const struct livepatch_elf *elf, const char *name)
{
    unsigned int i;

    for ( i = 1; i < elf->hdr->e_shnum; i++ )
        if ( !strcmp(name, elf->sec[i].name) )
            return &elf->sec[i];
    return NULL;
}

bool livepatch_elf_ignore_section(const Elf64_Shdr *sec)
{
    return !(sec->sh_flags & SHF_ALLOC);
}

static int elf_verify_strtab(const struct livepatch_elf *elf, const struct livepatch_elf_sec *sec)
{
    const char *contents = sec->data;

    if ( sec->sec->sh_type != SHT_STRTAB || !sec->sec->sh_size )
        return livepatch_fail(-EINVAL, "%s: string table %u is not a non-empty SHT_STRTAB", elf->name,
                              (unsigned int)(sec - elf->sec));
    if ( contents[0] || contents[sec->sec->sh_size - 1] )
        return livepatch_fail(-EINVAL, "%s: string table %u is not NUL-terminated", elf->name,
                              (unsigned int)(sec - elf->sec));
    return 0;
}

static int elf_header_check(const struct livepatch_elf *elf)
{
    const Elf64_Ehdr *hdr = elf->hdr;

    if ( sizeof(*hdr) > elf->len || memcmp(hdr->e_ident, "\177ELF", 4) )
        return livepatch_fail(-EINVAL, "%s: not an ELF payload", elf->name);
    if ( hdr->e_version != EV_CURRENT || hdr->e_ident[EI_VERSION] != EV_CURRENT ||
         hdr->e_ident[EI_ABIVERSION] != 0 ||
         (hdr->e_ident[EI_OSABI] != ELFOSABI_NONE && hdr->e_ident[EI_OSABI] != ELFOSABI_FREEBSD) ||
         hdr->e_type != ET_REL || hdr->e_phnum != 0 )
        return livepatch_fail(-EOPNOTSUPP, "%s: invalid ELF payload (not a relocatable ELF file, "
                              "e_type %u)", elf->name, hdr->e_type);
    if ( arch_livepatch_verify_elf(elf) )
        return -EOPNOTSUPP;
    if ( hdr->e_shstrndx == SHN_UNDEF )
        return livepatch_fail(-EINVAL, "%s: section name idx is undefined", elf->name);
    if ( hdr->e_shnum >= MAX_SECTIONS )
        return livepatch_fail(-EOPNOTSUPP, "%s: too many (%u) sections", elf->name, hdr->e_shnum);
    if ( hdr->e_shstrndx >= hdr->e_shnum )
        return livepatch_fail(-EINVAL, "%s: section name idx (%u) is past end", elf->name, hdr->e_shstrndx);
    if ( hdr->e_shoff >= elf->len )
        return livepatch_fail(-EINVAL, "%s: bogus e_shoff", elf->name);
    if ( hdr->e_shentsize < sizeof(Elf64_Shdr) )
        return livepatch_fail(-EINVAL, "%s: section header size is %u, expected %u", elf->name,
                              hdr->e_shentsize, (unsigned int)sizeof(Elf64_Shdr));
    if ( (elf->len - hdr->e_shoff) / hdr->e_shentsize < hdr->e_shnum )
        return livepatch_fail(-EINVAL, "%s: section header table is past the end of the file", elf->name);
    return 0;
}

static int elf_check_section(struct livepatch_elf *elf, unsigned int i)
{
    const Elf64_Shdr *s = elf->sec[i].sec;

    if ( s->sh_offset < sizeof(Elf64_Ehdr) ||
         (s->sh_type != SHT_NOBITS && !in_file(elf, s->sh_offset, s->sh_size)) )
        return livepatch_fail(-EINVAL, "%s: section [%u] data %s of payload", elf->name, i,
                              s->sh_offset < sizeof(Elf64_Ehdr) ? "at ELF header" : "is past end");
    if ( s->sh_addralign & (s->sh_addralign - 1) )
        return livepatch_fail(-EOPNOTSUPP, "%s: section [%u] alignment %#lx is not supported", elf->name, i,
                              (unsigned long)s->sh_addralign);
    if ( s->sh_addralign && s->sh_addr % s->sh_addralign )
        return livepatch_fail(-EINVAL, "%s: section [%u] addr is not aligned properly", elf->name, i);
    if ( (s->sh_flags & (SHF_WRITE | SHF_ALLOC)) && s->sh_type == SHT_NOBITS &&
         s->sh_size > LIVEPATCH_MAX_SIZE )
        return livepatch_fail(-EINVAL, "%s: section [%u] is too large", elf->name, i);
    elf->sec[i].data = elf->data + s->sh_offset;
    if ( s->sh_type == SHT_SYMTAB )
    {
        if ( elf->symtab )
            return livepatch_fail(-EOPNOTSUPP, "%s: unsupported multiple symbol tables", elf->name);
        elf->symtab = &elf->sec[i];
        elf->symtab_idx = i;
        if ( s->sh_link >= elf->hdr->e_shnum )
            return livepatch_fail(-EINVAL, "%s: symbol table idx (%u) to strtab past end (%u)", elf->name,
                                  s->sh_link, elf->hdr->e_shnum);
    }
    return 0;
}

static int elf_resolve_sections(struct livepatch_elf *elf)
{
    unsigned int i;
    int rc;

    for ( i = 1; i < elf->hdr->e_shnum; i++ )
    {
        elf->sec[i].sec = (const void *)(elf->data + elf->hdr->e_shoff + i * elf->hdr->e_shentsize);
        rc = elf_check_section(elf, i);
        if ( rc )
            return rc;
    }
    if ( !elf->symtab )
        return livepatch_fail(-EINVAL, "%s: no symbol table found", elf->name);
    if ( !elf->symtab->sec->sh_size || elf->symtab->sec->sh_entsize < sizeof(Elf64_Sym) ||
         elf->symtab->sec->sh_size % elf->symtab->sec->sh_entsize )
        return livepatch_fail(-EINVAL, "%s: symbol table header is corrupted", elf->name);
    elf->strtab = &elf->sec[elf->symtab->sec->sh_link];
    if ( elf->strtab == &elf->sec[0] )
        return livepatch_fail(-EINVAL, "%s: symbol table links to section 0", elf->name);
    return elf_verify_strtab(elf, elf->strtab);
}

static int elf_resolve_section_names(struct livepatch_elf *elf)
{
    const struct livepatch_elf_sec *shstrtab = &elf->sec[elf->hdr->e_shstrndx];
    unsigned int i;
    int rc = elf_verify_strtab(elf, shstrtab);

    if ( rc )
        return rc;
    for ( i = 1; i < elf->hdr->e_shnum; i++ )
    {
        if ( elf->sec[i].sec->sh_name >= shstrtab->sec->sh_size )
            return livepatch_fail(-EINVAL, "%s: section %u name is not within .shstrtab", elf->name, i);
        elf->sec[i].name = (const char *)shstrtab->data + elf->sec[i].sec->sh_name;
    }
    return 0;
}

static int elf_get_sym(struct livepatch_elf *elf)
{
    const struct livepatch_elf_sec *symtab = elf->symtab, *strtab = elf->strtab;
    unsigned int i, nsym = symtab->sec->sh_size / symtab->sec->sh_entsize;

    elf->sym = livepatch_alloc(nsym * sizeof(*elf->sym));
    if ( !elf->sym )
        return livepatch_fail(-ENOMEM, "%s: could not allocate memory for symbols", elf->name);
    for ( i = 1; i < nsym; i++ )
    {
        const Elf64_Sym *s = symtab->data + symtab->sec->sh_entsize * i;

        if ( s->st_name >= strtab->sec->sh_size )
            return livepatch_fail(-EINVAL, "%s: symbol [%u] name is not within .strtab", elf->name, i);
        elf->sym[i].sym = s;
        elf->sym[i].name = (const char *)strtab->data + s->st_name;
    }
    elf->nsym = nsym;
    return 0;
}

int livepatch_elf_load(struct livepatch_elf *elf, const char *name, const void *data, size_t len)
{
    int rc;

    memset(elf, 0, sizeof(*elf));
    elf->name = name;
    elf->data = data;
    elf->len = len;
    elf->hdr = data;
    rc = elf_header_check(elf);
    if ( rc )
        return rc;
    elf->scratch_size = elf->hdr->e_shnum * sizeof(*elf->sec);
    elf->sec = elf->scratch = livepatch_alloc(elf->scratch_size);
    if ( !elf->sec )
        return livepatch_fail(-ENOMEM, "%s: could not allocate memory for sections", elf->name);
    rc = elf_resolve_sections(elf);
    if ( !rc )
        rc = elf_resolve_section_names(elf);
    if ( !rc )
        rc = elf_get_sym(elf);
    return rc;
}

void livepatch_elf_free(struct livepatch_elf *elf)
{
    if ( elf->sym )
        livepatch_free(elf->sym, elf->symtab->sec->sh_size / elf->symtab->sec->sh_entsize * sizeof(*elf->sym));
    if ( elf->scratch )
        livepatch_free(elf->scratch, elf->scratch_size);
    elf->sym = NULL;
    elf->scratch = NULL;
}

static int elf_resolve_undefined(struct livepatch_elf *elf, unsigned int i, uint64_t *value)
{
    unsigned long addr, size;
    int rc = symbols_lookup_by_name(elf->sym[i].name, &addr, &size);

    if ( rc == -EEXIST )
        return livepatch_fail(-EINVAL, "%s: symbol %s is ambiguous in the running image", elf->name,
                              elf->sym[i].name);
    /* As Xen: the running image first, then what the loaded payloads added. */
    if ( rc == -ENOENT )
        rc = livepatch_symbols_lookup_by_name(elf->sym[i].name, &addr, &size);
    if ( rc )
        return livepatch_fail(-ENOENT, "%s: unknown symbol: %s", elf->name, elf->sym[i].name);
    *value = addr;
    return 0;
}

int livepatch_elf_resolve_symbols(struct livepatch_elf *elf)
{
    unsigned int i;
    int rc = 0;

    for ( i = 1; i < elf->nsym; i++ )
    {
        unsigned int idx = elf->sym[i].sym->st_shndx;
        uint64_t value = elf->sym[i].sym->st_value;

        switch ( idx )
        {
        case SHN_COMMON:
            return livepatch_fail(-EINVAL, "%s: unexpected common symbol: %s", elf->name, elf->sym[i].name);
        case SHN_UNDEF:
            rc = elf_resolve_undefined(elf, i, &value);
            break;
        case SHN_ABS:
            break;
        default:
            if ( idx >= SHN_LORESERVE || idx >= elf->hdr->e_shnum )
                return livepatch_fail(idx >= SHN_LORESERVE ? -EOPNOTSUPP : -EINVAL,
                                      "%s: out of bounds symbol section %#x (symbol %s)", elf->name, idx,
                                      elf->sym[i].name);
            if ( livepatch_elf_ignore_section(elf->sec[idx].sec) )
            {
                elf->sym[i].ignored = true;
                break;
            }
            value += (unsigned long)elf->sec[idx].load_addr;
        }
        if ( rc )
            return rc;
        elf->sym[i].value = value;
    }
    return 0;
}

int livepatch_elf_perform_relocs(struct livepatch_elf *elf)
{
    unsigned int i;
    int rc;

    for ( i = 1; i < elf->hdr->e_shnum; i++ )
    {
        const struct livepatch_elf_sec *r = &elf->sec[i], *base;

        if ( r->sec->sh_type != SHT_RELA && r->sec->sh_type != SHT_REL )
            continue;
        if ( r->sec->sh_info >= elf->hdr->e_shnum )
            continue;
        if ( !r->sec->sh_info )
            return livepatch_fail(-EINVAL, "%s: relocation section %s: sh_info 0 names no section", elf->name,
                                  r->name);
        base = &elf->sec[r->sec->sh_info];
        if ( !(base->sec->sh_flags & SHF_ALLOC) )
            continue;
        if ( r->sec->sh_link != elf->symtab_idx )
            return livepatch_fail(-EINVAL, "%s: relocation section %s links to section %u, not the symbol "
                                  "table %u", elf->name, r->name, r->sec->sh_link, elf->symtab_idx);
        if ( r->sec->sh_type == SHT_REL )
            return livepatch_fail(-EOPNOTSUPP, "%s: SHT_REL relocations (%s) are not supported on x86",
                                  elf->name, r->name);
        if ( !r->sec->sh_size )
            continue;
        if ( r->sec->sh_entsize < sizeof(Elf64_Rela) || r->sec->sh_size % r->sec->sh_entsize )
            return livepatch_fail(-EINVAL, "%s: section relative header %s is corrupted", elf->name, r->name);
        rc = arch_livepatch_perform_rela(elf, base, r);
        if ( rc )
            return rc;
    }
    return 0;
}
