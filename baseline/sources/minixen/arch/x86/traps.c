/*
 * Traps: a ud2 raises SIGILL, which minixen treats as Xen treats #UD in its own
 * code: look the address up among the bug frames, then warn and carry on, or die.
 */
#include <xen/lib.h>
#include <asm/syscall.h>

#define SIGILL       4
#define SA_SIGINFO   0x00000004
#define SA_RESTORER  0x04000000
#define REG_RIP      16

struct kernel_sigaction {
    void (*handler)(int, void *, void *);
    unsigned long flags;
    void (*restorer)(void);
    uint64_t mask;
};

/* The start of struct ucontext on x86_64 Linux, up to the saved registers. */
struct ucontext_head {
    unsigned long uc_flags;
    void *uc_link;
    void *ss_sp;
    int ss_flags;
    size_t ss_size;
    unsigned long gregs[23];
};

void sigreturn_trampoline(void);

static void invalid_op(int sig, void *info, void *context)
{
    struct ucontext_head *uc = context;

    if ( !do_bug_frame(&uc->gregs[REG_RIP]) )
        return;
    panic("FATAL TRAP: invalid opcode at %#lx", uc->gregs[REG_RIP]);
}

void trap_init(void)
{
    struct kernel_sigaction action = {
        .handler = invalid_op,
        .flags = SA_SIGINFO | SA_RESTORER,
        .restorer = sigreturn_trampoline,
    };

    if ( syscall6(__NR_rt_sigaction, SIGILL, (long)&action, 0, 8, 0, 0) )
        panic("cannot install the #UD handler");
}
