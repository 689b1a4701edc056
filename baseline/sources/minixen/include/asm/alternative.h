/*
 * Alternatives, laid out exactly as Xen's (xen/arch/x86/include/asm/alternative.h): the original
 * instructions in the code, a struct alt_instr in .altinstructions, the replacement (possibly
 * empty) in .altinstr_replacement. At boot, and for a payload when it is loaded, an entry whose
 * feature the "CPU" has replaces its original, padded with NOPs.
 */
#ifndef __ASM_ALTERNATIVE_H__
#define __ASM_ALTERNATIVE_H__

#define __stringify_1(x) #x
#define __stringify(x)   __stringify_1(x)

/* minixen's CPU features: the bits of minixen_features (arch/x86/alternative.c). */
#define X86_FEATURE_ALWAYS            0   /* always set */
#define X86_FEATURE_SC_NO_BRANCH_HARDEN 1 /* set: minixen's "CPU" needs no speculation barrier */
#define X86_FEATURE_LFENCE_NO_SERIALISE 2 /* set: lfence does not serialise, mfence does */

#define ALTERNATIVE(oldinstr, newinstr, feature)                                  \
    "661:\n\t" oldinstr "\n662:\n\t"                                              \
    ".pushsection .altinstructions, \"a\", @progbits\n\t"                         \
    ".long 661b - .\n\t.long 663f - .\n\t.word " __stringify(feature) "\n\t"      \
    ".byte 662b - 661b\n\t.byte 664f - 663f\n\t.byte 0\n\t.byte 0\n\t"            \
    ".popsection\n\t"                                                             \
    ".pushsection .altinstr_replacement, \"ax\", @progbits\n"                     \
    "663:\n\t" newinstr "\n664:\n\t.popsection"

#ifndef __ASSEMBLY__

#include <xen/types.h>

/* struct alt_instr (xen/arch/x86/include/asm/alternative.h): offsets relative to their own field. */
struct alt_instr {
    int32_t orig_offset, repl_offset;
    uint16_t cpuid;
    uint8_t orig_len, repl_len, pad_len, priv;
} __attribute__((packed));
#define ALT_MAX_PATCH_LEN (255 - 1)
#define ALT_FLAG_NOT      (1 << 15)   /* the entry applies when the feature is absent */
#define ALT_FEATURES      (21 * 32)   /* Xen 4.17's NCAPINTS words of feature bits */

#define alternative(oldinstr, newinstr, feature) \
    asm volatile ( ALTERNATIVE(oldinstr, newinstr, feature) ::: "memory" )

/* Xen's block_speculation() (asm/nospec.h): an lfence, dropped where the CPU needs none. */
static inline __attribute__((__always_inline__)) void block_speculation(void)
{
    alternative("lfence", "", X86_FEATURE_SC_NO_BRANCH_HARDEN);
}

/* A serialising barrier: lfence, or mfence where lfence does not serialise (a non-empty replacement). */
static inline __attribute__((__always_inline__)) void serialise_barrier(void)
{
    alternative("lfence", "mfence", X86_FEATURE_LFENCE_NO_SERIALISE);
}

/* Patch each entry's site in place; `poke` writes the text (the image's through its writable alias). */
void apply_alternatives(struct alt_instr *start, struct alt_instr *end,
                        int (*poke)(void *addr, const uint8_t *bytes, size_t len));
extern struct alt_instr __alt_instructions[], __alt_instructions_end[];

#endif /* __ASSEMBLY__ */
#endif /* __ASM_ALTERNATIVE_H__ */
