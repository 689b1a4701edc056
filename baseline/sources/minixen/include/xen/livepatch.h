/*
 * minixen's livepatch: Xen's payload loader (xen/common/livepatch.c, livepatch_elf.c,
 * xen/arch/x86/livepatch.c), with Xen's states, checks and four operations.
 */
#ifndef __XEN_LIVEPATCH_H__
#define __XEN_LIVEPATCH_H__

#include <xen/types.h>
#include <xen/elfstructs.h>
#include <asm/bug.h>
#include <asm/alternative.h>

#define LIVEPATCH_STATE_CHECKED   1
#define LIVEPATCH_STATE_APPLIED   2
#define LIVEPATCH_ACTION_UNLOAD   1
#define LIVEPATCH_ACTION_REVERT   2
#define LIVEPATCH_ACTION_APPLY    3
#define LIVEPATCH_ACTION_REPLACE  4
#define LIVEPATCH_PAYLOAD_VERSION 2
#define LIVEPATCH_NAME_SIZE       128 /* Xen's XEN_LIVEPATCH_NAME_SIZE: the NUL included */
#define LIVEPATCH_MAX_SIZE        (2UL << 20)
#define LIVEPATCH_MAX_PAYLOADS    16
#define LIVEPATCH_MAX_FUNCS       64
#define ARCH_PATCH_INSN_SIZE      5
#define ENDBR64_LEN               4

/* xen/include/public/sysctl.h, LIVEPATCH_PAYLOAD_VERSION 2: 104 bytes on x86_64. */
struct livepatch_func {
    const char *name;
    void *new_addr;
    void *old_addr;
    uint32_t new_size;
    uint32_t old_size;
    uint8_t version;
    uint8_t _pad[39];       /* Xen 4.17 keeps per-function state apart (struct livepatch_fstate): */
    uint8_t expect[32];     /* the loader never writes an entry once the payload is secured. */
};


struct livepatch_elf_sec {
    const Elf64_Shdr *sec;
    const char *name;
    const void *data;
    void *load_addr;
};

struct livepatch_elf_sym {
    const Elf64_Sym *sym;
    const char *name;
    uint64_t value;
    bool ignored;
};

struct livepatch_elf {
    const char *name;
    const unsigned char *data;
    size_t len;
    const Elf64_Ehdr *hdr;
    struct livepatch_elf_sec *sec;
    struct livepatch_elf_sym *sym;
    unsigned int nsym, symtab_idx;
    const struct livepatch_elf_sec *symtab, *strtab;
    void *scratch;
    size_t scratch_size;
};

/* common/livepatch.c */
long livepatch_request(char *args, char *buf, size_t size, size_t *len);
void livepatch_take_body(void *data, size_t size);
long livepatch_body_size(const char *line);
void livepatch_quiesce(void);
const struct bug_frame *livepatch_find_bug_frame(unsigned long addr, unsigned int *type);
int livepatch_fail(int rc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void *livepatch_alloc(size_t size);
void livepatch_free(void *p, size_t size);

/* common/livepatch_elf.c */
int livepatch_elf_load(struct livepatch_elf *elf, const char *name, const void *data, size_t len);
void livepatch_elf_free(struct livepatch_elf *elf);
const struct livepatch_elf_sec *livepatch_elf_sec_by_name(const struct livepatch_elf *elf, const char *name);
int livepatch_elf_resolve_symbols(struct livepatch_elf *elf);
int livepatch_elf_perform_relocs(struct livepatch_elf *elf);
bool livepatch_elf_ignore_section(const Elf64_Shdr *sec);

/* common/livepatch.c: the new symbols of the loaded payloads, as later payloads resolve them */
int livepatch_symbols_lookup_by_name(const char *name, unsigned long *addr, unsigned long *size);

/* common/symbols.c */
int symbols_lookup_by_name(const char *name, unsigned long *addr, unsigned long *size);
bool symbols_is_code(const char *name);
bool symbols_is_init(unsigned long addr);

/* arch/x86/livepatch.c */
int arch_livepatch_verify_elf(const struct livepatch_elf *elf);
int arch_livepatch_perform_rela(struct livepatch_elf *elf, const struct livepatch_elf_sec *base,
                                const struct livepatch_elf_sec *rela);
int arch_livepatch_verify_func(const struct livepatch_func *func);
unsigned int arch_livepatch_patch_offset(const struct livepatch_func *func);
int arch_livepatch_apply(const struct livepatch_func *func, uint8_t *saved, unsigned int *offset);
int arch_livepatch_revert(const struct livepatch_func *func, const uint8_t *saved, unsigned int offset);
int arch_livepatch_secure(void *addr, size_t size, int prot);
int arch_livepatch_text_write(void *addr, const uint8_t *bytes, size_t len);

#endif /* __XEN_LIVEPATCH_H__ */
