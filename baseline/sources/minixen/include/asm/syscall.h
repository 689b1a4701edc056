/* The few Linux system calls minixen needs, made directly: there is no libc. */
#ifndef __ASM_SYSCALL_H__
#define __ASM_SYSCALL_H__

#include <xen/types.h>

#define __NR_read          0
#define __NR_write         1
#define __NR_close         3
#define __NR_mmap          9
#define __NR_mprotect     10
#define __NR_munmap       11
#define __NR_rt_sigaction 13
#define __NR_rt_sigreturn 15
#define __NR_getpid       39
#define __NR_exit_group  231

static inline long syscall6(long nr, long a1, long a2, long a3, long a4, long a5, long a6)
{
    register long r10 asm("r10") = a4;
    register long r8 asm("r8") = a5;
    register long r9 asm("r9") = a6;
    long ret;

    asm volatile ( "syscall"
                   : "=a" (ret)
                   : "a" (nr), "D" (a1), "S" (a2), "d" (a3), "r" (r10), "r" (r8), "r" (r9)
                   : "rcx", "r11", "memory" );
    return ret;
}

#define syscall3(nr, a, b, c) syscall6(nr, (long)(a), (long)(b), (long)(c), 0, 0, 0)

static inline ssize_t sys_read(int fd, void *buf, size_t len)
{
    return syscall3(__NR_read, fd, buf, len);
}

static inline ssize_t sys_write(int fd, const void *buf, size_t len)
{
    return syscall3(__NR_write, fd, buf, len);
}

static inline noreturn void sys_exit(int code)
{
    for ( ;; )
        syscall3(__NR_exit_group, code, 0, 0);
}

#endif /* __ASM_SYSCALL_H__ */
