/*
 * x86 parts of livepatch (xen/arch/x86/livepatch.c): the relocations Xen accepts, the
 * room a jump needs, and writing the jump. minixen's text stays mapped read+execute:
 * the jump is written through /proc/self/mem, a writable alias of the text as Xen's
 * patching writes through its own alias, so no page is ever writable and executable.
 */
#include <xen/lib.h>
#include <xen/errno.h>
#include <xen/livepatch.h>
#include <asm/syscall_ext.h>

static const uint8_t endbr64[ENDBR64_LEN] = { 0xf3, 0x0f, 0x1e, 0xfa };

int arch_livepatch_verify_elf(const struct livepatch_elf *elf)
{
    const Elf64_Ehdr *hdr = elf->hdr;

    if ( hdr->e_machine != EM_X86_64 || hdr->e_ident[EI_CLASS] != ELFCLASS64 ||
         hdr->e_ident[EI_DATA] != ELFDATA2LSB )
        return livepatch_fail(-EOPNOTSUPP, "%s: unsupported ELF machine type %u", elf->name, hdr->e_machine);
    return 0;
}

static int bad_offset(const struct livepatch_elf *elf, const struct livepatch_elf_sec *base,
                      const struct livepatch_elf_sec *rela, unsigned int i)
{
    return livepatch_fail(-EINVAL, "%s: relocation %u in %s: offset is past section %s", elf->name, i,
                          rela->name, base->name);
}

int arch_livepatch_perform_rela(struct livepatch_elf *elf, const struct livepatch_elf_sec *base,
                                const struct livepatch_elf_sec *rela)
{
    unsigned int i;

    for ( i = 0; i < rela->sec->sh_size / rela->sec->sh_entsize; i++ )
    {
        const Elf64_Rela *r = rela->data + i * rela->sec->sh_entsize;
        unsigned int symndx = ELF64_R_SYM(r->r_info);
        uint8_t *dest = (uint8_t *)base->load_addr + r->r_offset;
        uint64_t val;
        int32_t rel32;

        if ( symndx == 0 )
            return livepatch_fail(-EOPNOTSUPP, "%s: relocation %u in %s: encountered STN_UNDEF", elf->name, i,
                                  rela->name);
        if ( symndx >= elf->nsym )
            return livepatch_fail(-EINVAL, "%s: relocation %u in %s wants symbol@%u which is past end",
                                  elf->name, i, rela->name, symndx);
        if ( elf->sym[symndx].ignored )
            return livepatch_fail(-EINVAL, "%s: relocation %u in %s against ignored symbol %s cannot be "
                                  "resolved", elf->name, i, rela->name, elf->sym[symndx].name);
        val = r->r_addend + elf->sym[symndx].value;
        switch ( ELF64_R_TYPE(r->r_info) )
        {
        case R_X86_64_NONE:
            break;
        case R_X86_64_64:
            if ( r->r_offset >= base->sec->sh_size || r->r_offset + 8 > base->sec->sh_size )
                return bad_offset(elf, base, rela, i);
            memcpy(dest, &val, 8);
            break;
        case R_X86_64_PLT32: /* memcpy and friends: as PC32, since every symbol is hidden */
        case R_X86_64_PC32:
            if ( r->r_offset >= base->sec->sh_size || r->r_offset + 4 > base->sec->sh_size )
                return bad_offset(elf, base, rela, i);
            val -= (uint64_t)dest;
            rel32 = val;
            if ( (int64_t)val != rel32 )
                return livepatch_fail(-EOVERFLOW, "%s: overflow in relocation %u in %s for %s", elf->name, i,
                                      rela->name, base->name);
            memcpy(dest, &rel32, 4);
            break;
        default:
            return livepatch_fail(-EOPNOTSUPP, "%s: unhandled relocation type %u (relocation %u in %s)",
                                  elf->name, ELF64_R_TYPE(r->r_info), i, rela->name);
        }
    }
    return 0;
}

static bool is_endbr64(const void *addr)
{
    return !memcmp(addr, endbr64, ENDBR64_LEN);
}

int arch_livepatch_verify_func(const struct livepatch_func *func)
{
    unsigned int needed = ARCH_PATCH_INSN_SIZE;

    if ( !func->new_addr )
        return livepatch_fail(-EOPNOTSUPP, "%s: NOP patching (new_addr 0) is not supported", func->name);
    if ( is_endbr64(func->old_addr) )
        needed += ENDBR64_LEN;
    if ( func->old_size < needed )
        return livepatch_fail(-EINVAL, "%s: old function is %u bytes, the jump needs %u", func->name,
                              func->old_size, needed);
    return 0;
}

/* ENDBR64 must stay the first instruction of the function: the jump goes after it. */
unsigned int arch_livepatch_patch_offset(const struct livepatch_func *func)
{
    return is_endbr64(func->old_addr) ? ENDBR64_LEN : 0;
}

int arch_livepatch_text_write(void *addr, const uint8_t *bytes, size_t len)
{
    static long mem_fd = -1;

    if ( mem_fd < 0 )
        mem_fd = sys_open("/proc/self/mem", O_RDWR | O_CLOEXEC, 0);
    if ( mem_fd < 0 )
        return livepatch_fail(-EPERM, "cannot open /proc/self/mem to write the text (%ld)", mem_fd);
    if ( sys_pwrite(mem_fd, bytes, len, (unsigned long)addr) != (long)len || memcmp(addr, bytes, len) )
        return livepatch_fail(-EFAULT, "cannot write %lu bytes of text at %p", (unsigned long)len, addr);
    return 0;
}

int arch_livepatch_apply(const struct livepatch_func *func, uint8_t *saved, unsigned int *offset)
{
    uint8_t insn[ARCH_PATCH_INSN_SIZE];
    uint8_t *old = (uint8_t *)func->old_addr + arch_livepatch_patch_offset(func);
    int32_t rel = (int64_t)func->new_addr - (int64_t)(old + ARCH_PATCH_INSN_SIZE);

    *offset = old - (uint8_t *)func->old_addr;
    memcpy(saved, old, ARCH_PATCH_INSN_SIZE);
    insn[0] = 0xe9; /* jmp rel32 */
    memcpy(&insn[1], &rel, sizeof(rel));
    return arch_livepatch_text_write(old, insn, sizeof(insn));
}

int arch_livepatch_revert(const struct livepatch_func *func, const uint8_t *saved, unsigned int offset)
{
    return arch_livepatch_text_write((uint8_t *)func->old_addr + offset, saved, ARCH_PATCH_INSN_SIZE);
}

int arch_livepatch_secure(void *addr, size_t size, int prot)
{
    if ( !size )
        return 0;
    if ( sys_mprotect(addr, PAGE_ALIGN(size), prot) )
        return livepatch_fail(-EINVAL, "cannot set protection %d on payload memory at %p", prot, addr);
    return 0;
}
