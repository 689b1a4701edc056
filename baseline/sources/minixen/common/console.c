/* The console: printk goes to standard error, each line prefixed "(XEN) " as on a serial line. */
#include <xen/lib.h>
#include <asm/syscall.h>

void console_write(int fd, const char *text, size_t len)
{
    while ( len )
    {
        ssize_t done = sys_write(fd, text, len);

        if ( done <= 0 )
            return;
        text += done;
        len -= done;
    }
}

static void vprintk(const char *fmt, va_list args)
{
    char line[512] = "(XEN) ";
    int len = vsnprintf(line + 6, sizeof(line) - 6, fmt, args);

    if ( len > (int)sizeof(line) - 7 )
        len = sizeof(line) - 7;
    console_write(2, line, 6 + len);
}

void printk(const char *fmt, ...)
{
    va_list args;

    va_start(args, fmt);
    vprintk(fmt, args);
    va_end(args);
}

void panic(const char *fmt, ...)
{
    va_list args;

    printk("****************************************\n");
    va_start(args, fmt);
    vprintk(fmt, args);
    va_end(args);
    printk("\n****************************************\n");
    sys_exit(134);
}
