#ifndef __XEN_COMPILER_H__
#define __XEN_COMPILER_H__

#ifndef __ASSEMBLY__
/*
 * Every symbol is hidden, so -fpic code reaches it RIP-relative without a GOT:
 * the image is linked at a fixed address, as Xen does with the same pragma.
 */
#pragma GCC visibility push(hidden)
#endif

#define likely(x)       __builtin_expect(!!(x), 1)
#define unlikely(x)     __builtin_expect(!!(x), 0)
#define __used          __attribute__((__used__))
#define __section(s)    __attribute__((__section__(s)))
#define __init          __section(".init.text")
#define __initdata      __section(".init.data")
#define noreturn        __attribute__((__noreturn__))
#define noinline        __attribute__((__noinline__))
#define unreachable()   __builtin_unreachable()
#define ARRAY_SIZE(a)   (sizeof(a) / sizeof((a)[0]))

#endif /* __XEN_COMPILER_H__ */
