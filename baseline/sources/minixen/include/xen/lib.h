#ifndef __XEN_LIB_H__
#define __XEN_LIB_H__

#include <xen/types.h>
#include <asm/bug.h>

#define BUG_ON(p)  do { if ( unlikely(p) ) BUG();  } while ( 0 )
#define WARN_ON(p) ({                                                        \
    bool ret_warn_on_ = !!(p);                                               \
    if ( unlikely(ret_warn_on_) )                                            \
        WARN();                                                              \
    unlikely(ret_warn_on_);                                                  \
})
#define ASSERT(p) do {                                                       \
    if ( unlikely(!(p)) )                                                    \
        assert_failed(#p);                                                   \
} while ( 0 )

/* console.c */
void printk(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void console_write(int fd, const char *text, size_t len);
noreturn void panic(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* vsprintf.c */
int vsnprintf(char *buf, size_t size, const char *fmt, va_list args);
int snprintf(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* string.c */
void *memcpy(void *dest, const void *src, size_t n);
void *memmove(void *dest, const void *src, size_t n);
void *memset(void *s, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
char *strchr(const char *s, int c);
long simple_strtol(const char *cp, const char **endp, unsigned int base);

/* bug.c */
int do_bug_frame(unsigned long *rip);

#endif /* __XEN_LIB_H__ */
