/* The system calls only the livepatch loader and the socket console need (no libc). */
#ifndef __ASM_SYSCALL_EXT_H__
#define __ASM_SYSCALL_EXT_H__

#include <asm/syscall.h>

#define __NR_open          2
#define __NR_pwrite64     18
#define __NR_socket       41
#define __NR_accept       43
#define __NR_bind         49
#define __NR_listen       50
#define __NR_lseek         8
#define __NR_umask        95
#define __NR_unlink       87
#define __NR_chmod        90

#define O_RDONLY          0
#define O_RDWR            2
#define O_CLOEXEC         0x80000
#define PROT_NONE         0
#define PROT_READ         1
#define PROT_WRITE        2
#define PROT_EXEC         4
#define MAP_PRIVATE       0x02
#define MAP_ANONYMOUS     0x20
#define MAP_FIXED_NOREPLACE 0x100000
#define SEEK_END          2
#define EEXIST_SYS        17
#define PAGE_SIZE         4096UL
#define PAGE_ALIGN(x)     (((x) + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1))

static inline long sys_open(const char *path, int flags, int mode)
{
    return syscall3(__NR_open, path, flags, mode);
}

static inline long sys_close(int fd)
{
    return syscall3(__NR_close, fd, 0, 0);
}

static inline long sys_lseek(int fd, long offset, int whence)
{
    return syscall3(__NR_lseek, fd, offset, whence);
}

static inline long sys_pwrite(int fd, const void *buf, size_t len, unsigned long offset)
{
    return syscall6(__NR_pwrite64, fd, (long)buf, len, offset, 0, 0);
}

static inline void *sys_mmap(unsigned long addr, size_t len, int prot, int flags, int fd, long offset)
{
    return (void *)syscall6(__NR_mmap, addr, len, prot, flags, fd, offset);
}

static inline long sys_mprotect(void *addr, size_t len, int prot)
{
    return syscall3(__NR_mprotect, addr, len, prot);
}

static inline long sys_munmap(void *addr, size_t len)
{
    return syscall3(__NR_munmap, addr, len, 0);
}

static inline bool sys_failed(long ret)
{
    return (unsigned long)ret >= (unsigned long)-4095;
}

#endif /* __ASM_SYSCALL_EXT_H__ */
