/*
 * start_xen: bring the "hypervisor" up, then serve toolstack requests. Between two
 * requests no request handler is on the stack: that is minixen's quiescent point,
 * where Xen would patch on the way back from a VMEXIT.
 */
#include <xen/lib.h>
#include <xen/errno.h>
#include <xen/version.h>
#include <xen/livepatch.h>
#include <asm/syscall_ext.h>
#include <asm/alternative.h>

void trap_init(void);
void setup_dom0(void);
void start_secondary(unsigned int vendor, unsigned int family);
int handle_request(char *line, char *buf, size_t size, size_t *len);

#define FRAMING_DRAIN_MAX (1UL << 20)

static char request[4096];
static char line[4096];
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

/*
 * A request's body (a payload upload: its length is on its line) follows the line:
 * first what is already buffered, then from fd. Too large a body is read and dropped,
 * so the next request still starts on a line. Returns false at end of input.
 */
static bool read_body(int in, size_t *used, void *data, size_t size)
{
    size_t got = *used < size ? *used : size;

    if ( data )
        memcpy(data, request, got);
    *used -= got;
    memmove(request, request + got, *used);
    while ( got < size )
    {
        size_t want = size - got;
        ssize_t n;

        if ( !data && want > sizeof(answer) )
            want = sizeof(answer);
        n = sys_read(in, data ? (char *)data + got : answer, want);
        if ( n <= 0 )
            return false;
        got += n;
    }
    return true;
}

static bool holds_nul(const char *buf, size_t len)
{
    size_t i;

    for ( i = 0; i < len; i++ )
        if ( !buf[i] )
            return true;
    return false;
}

/*
 * The framing: a request is one line of at most sizeof(request) - 1 bytes without a NUL, and
 * an upload line is followed by exactly the size its last word gives. A request that breaks
 * the framing cannot be told apart from what follows it: it is answered with the reason and
 * the connection ends, so nothing after it (a payload's bytes) is ever read as a request.
 */
static int framing_error(int in, int out, const char *reason)
{
    size_t len = snprintf(answer, sizeof(answer), "error : %s; closing the connection\n= %d\n", reason,
                          -EINVAL), drained = 0;
    ssize_t got;

    console_write(out, answer, len < sizeof(answer) ? len : sizeof(answer) - 1);
    /*
     * What the client sent after it is discarded (a bounded amount, until it stops sending), so
     * that closing does not reset the connection before the client has read why.
     */
    while ( drained < FRAMING_DRAIN_MAX && (got = sys_read(in, request, sizeof(request))) > 0 )
        drained += got;
    return -1;
}

/*
 * Read requests from fd, one per line, until "quit" (returns 1), end of input (0) or a
 * request that breaks the framing (-1).
 */
static int serve(int in, int out)
{
    size_t used = 0;

    for ( ;; )
    {
        char *newline = memchr_line(request, used);
        ssize_t got;

        if ( newline )
        {
            size_t line_len = newline - request, len;
            long body_size;
            void *body = NULL;
            int stop;

            if ( holds_nul(request, line_len) )
                return framing_error(in, out, "a request holds a NUL byte");
            *newline = '\0';
            memcpy(line, request, line_len + 1);
            used -= line_len + 1;
            memmove(request, newline + 1, used);
            body_size = livepatch_body_size(line);
            if ( body_size < 0 )
                return framing_error(in, out, "livepatch upload: the last word must be the payload's size in bytes");
            if ( body_size )
            {
                body = body_size <= LIVEPATCH_MAX_SIZE ? livepatch_alloc(body_size) : NULL;
                if ( !read_body(in, &used, body, body_size) )
                {
                    if ( body )
                        livepatch_free(body, body_size);
                    return 0;
                }
                livepatch_take_body(body, body_size);
            }
            stop = handle_request(line, answer, sizeof(answer), &len);
            if ( body )
                livepatch_free(body, body_size);
            /* The quiescent point: the handler has returned, queued patching happens now. */
            livepatch_quiesce();
            console_write(out, answer, len);
            if ( stop )
                return 1;
            continue;
        }
        if ( used == sizeof(request) )
            return framing_error(in, out, "a request is longer than 4095 bytes");
        got = sys_read(in, request + used, sizeof(request) - used);
        if ( got <= 0 )
            return 0;
        used += got;
    }
}

#define AF_UNIX       1
#define SOCK_STREAM   1
#define SOCK_CLOEXEC  0x80000

struct sockaddr_un {
    uint16_t sun_family;
    char sun_path[108];
};

/* Background mode: one toolstack connection at a time on a socket only the owner may use. */
static void serve_socket(const char *path)
{
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    size_t len = strlen(path);
    long fd;

    if ( len >= sizeof(addr.sun_path) )
        panic("socket path too long: %s", path);
    memcpy(addr.sun_path, path, len + 1);
    syscall3(__NR_umask, 077, 0, 0);
    syscall3(__NR_unlink, path, 0, 0);
    fd = syscall3(__NR_socket, AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if ( fd < 0 || syscall3(__NR_bind, fd, &addr, sizeof(addr)) || syscall3(__NR_listen, fd, 4, 0) )
        panic("cannot listen on %s", path);
    syscall3(__NR_chmod, path, 0600, 0); /* only the owner may connect */
    printk("listening on %s\n", path);
    for ( ;; )
    {
        long conn = syscall3(__NR_accept, fd, 0, 0);
        int stop;

        if ( conn < 0 )
            continue;
        stop = serve(conn, conn);
        sys_close(conn);
        if ( stop == 1 )
            break;
    }
    syscall3(__NR_unlink, path, 0, 0);
}

noreturn void start_xen(unsigned long *stack)
{
    apply_alternatives(__alt_instructions, __alt_instructions_end, arch_livepatch_text_write);
    trap_init();
    start_secondary(1, 0x19);
    banner();
    setup_dom0();
    if ( stack[0] == 3 && !strcmp((char *)stack[2], "--socket") )
        serve_socket((char *)stack[3]);
    else if ( serve(0, 1) < 0 )
        sys_exit(2);
    sys_exit(0);
}
