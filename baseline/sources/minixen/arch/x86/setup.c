/*
 * start_xen: bring the "hypervisor" up, then serve toolstack requests. Between two
 * requests no request handler is on the stack: that is minixen's quiescent point,
 * where Xen would patch on the way back from a VMEXIT.
 */
#include <xen/lib.h>
#include <xen/version.h>
#include <asm/syscall.h>

void trap_init(void);
void setup_dom0(void);
int handle_request(char *line, char *buf, size_t size, size_t *len);

static char request[4096];
static char answer[8192];

static char *memchr_line(char *buf, size_t len)
{
    size_t i;

    for ( i = 0; i < len; i++ )
        if ( buf[i] == '\n' )
            return buf + i;
    return NULL;
}

static void banner(void)
{
    printk("minixen %u.%u%s (%s)\n", xen_major_version(), xen_minor_version(),
           xen_extra_version(), xen_changeset());
}

/* Read requests from fd, one per line, until "quit" or end of input. */
static void serve(int in, int out)
{
    size_t used = 0;

    for ( ;; )
    {
        char *newline = memchr_line(request, used);
        ssize_t got;

        if ( newline )
        {
            size_t line_len = newline - request, len;
            int stop;

            *newline = '\0';
            stop = handle_request(request, answer, sizeof(answer), &len);
            console_write(out, answer, len);
            used -= line_len + 1;
            memmove(request, newline + 1, used);
            if ( stop )
                return;
            continue;
        }
        if ( used == sizeof(request) )
            used = 0; /* An overlong request is dropped, not executed in part. */
        got = sys_read(in, request + used, sizeof(request) - used);
        if ( got <= 0 )
            return;
        used += got;
    }
}

noreturn void start_xen(unsigned long *stack)
{
    trap_init();
    banner();
    setup_dom0();
    serve(0, 1);
    sys_exit(0);
}
