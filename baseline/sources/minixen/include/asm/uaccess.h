/*
 * Guest memory access that may fault, as Xen's x86 uaccess.h: each access that may fault
 * records, in .ex_table, where it is and where to continue (struct exception_table_entry,
 * two 32-bit displacements). minixen continues right after the access.
 */
#ifndef __ASM_UACCESS_H__
#define __ASM_UACCESS_H__

#include <xen/types.h>

static inline uint32_t read_guest_u32(const uint32_t *p)
{
    uint32_t value;

    asm volatile ( "1: movl %[ptr], %[val]\n"
                   "2:\n"
                   ".pushsection .ex_table, \"a\", @progbits\n"
                   ".balign 4\n"
                   ".long 1b - ., 2b - .\n"
                   ".popsection\n"
                   : [val] "=r" (value) : [ptr] "m" (*p) );
    return value;
}

#endif /* __ASM_UACCESS_H__ */
