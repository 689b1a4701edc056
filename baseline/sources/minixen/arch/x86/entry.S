/* Process entry: the kernel hands us argc/argv on the stack, as a boot loader hands Xen its modules. */
        .section .text.entry, "ax", @progbits
        .globl _start
        .type _start, @function
_start:
        endbr64
        xor     %ebp, %ebp
        mov     %rsp, %rdi              /* &argc */
        and     $-16, %rsp
        call    start_xen
        ud2
        .size _start, . - _start

/* Return from a signal handler: the kernel needs SA_RESTORER without a libc. */
        .globl sigreturn_trampoline
        .type sigreturn_trampoline, @function
sigreturn_trampoline:
        mov     $15, %eax               /* __NR_rt_sigreturn */
        syscall
        ud2
        .size sigreturn_trampoline, . - sigreturn_trampoline

        .section .note.GNU-stack, "", @progbits
