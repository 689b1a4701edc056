/*
 * Alternatives (xen/arch/x86/alternative.c, _apply_alternatives): each entry whose feature
 * minixen's "CPU" has gets its replacement written over the original, the rest of the site
 * filled with NOPs; a relative call or jump in the replacement is moved to the site.
 */
#include <xen/lib.h>
#include <xen/livepatch.h>
#include <asm/alternative.h>

static const uint32_t minixen_features = (1U << X86_FEATURE_ALWAYS) | (1U << X86_FEATURE_SC_NO_BRANCH_HARDEN) |
                                          (1U << X86_FEATURE_LFENCE_NO_SERIALISE);

static bool cpu_has(unsigned int feature)
{
    return feature < 32 && (minixen_features >> feature) & 1;
}

void apply_alternatives(struct alt_instr *start, struct alt_instr *end,
                        int (*poke)(void *addr, const uint8_t *bytes, size_t len))
{
    struct alt_instr *a;

    for ( a = start; a < end; a++ )
    {
        uint8_t *orig = (uint8_t *)&a->orig_offset + a->orig_offset;
        const uint8_t *repl = (const uint8_t *)&a->repl_offset + a->repl_offset;
        unsigned int total = a->orig_len + a->pad_len;
        uint8_t buf[ALT_MAX_PATCH_LEN];
        int32_t rel;

        /* The loader refused such entries in a payload; the image's own are the compiler's. */
        if ( a->repl_len > total || total > sizeof(buf) ||
             cpu_has(a->cpuid & ~ALT_FLAG_NOT) == !!(a->cpuid & ALT_FLAG_NOT) )
            continue;
        memcpy(buf, repl, a->repl_len);
        if ( a->repl_len >= 5 && (buf[0] & 0xfe) == 0xe8 )
        {
            memcpy(&rel, buf + 1, sizeof(rel));
            rel += repl - orig;
            memcpy(buf + 1, &rel, sizeof(rel));
        }
        memset(buf + a->repl_len, 0x90, total - a->repl_len);
        poke(orig, buf, total);
    }
}
