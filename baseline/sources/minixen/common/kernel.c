/*
 * Requests from the toolstack, one per line; each answer is zero or more lines of
 * "key : value" and a final "= <rc>" line. This stands in for Xen's hypercalls.
 */
#include <xen/lib.h>
#include <xen/errno.h>
#include <xen/version.h>
#include <xen/livepatch.h>
#include <xen/event.h>
#include <public/domctl.h>

long do_domctl(struct xen_domctl *op);

static bool starts_with(const char *s, const char *prefix)
{
    while ( *prefix )
        if ( *s++ != *prefix++ )
            return false;
    return true;
}

struct reply {
    char *buf;
    size_t size, len;
};

static void reply_line(struct reply *r, const char *key, const char *fmt, ...)
{
    va_list args;
    int n;

    n = snprintf(r->buf + r->len, r->size - r->len, "%s : ", key);
    r->len += n;
    va_start(args, fmt);
    n = vsnprintf(r->buf + r->len, r->size - r->len, fmt, args);
    va_end(args);
    r->len += n;
    if ( r->len + 1 < r->size )
        r->buf[r->len++] = '\n';
    if ( r->len >= r->size )
        r->len = r->size - 1;
}

static long do_info(struct reply *r)
{
    const unsigned char *id;
    unsigned int len, i;
    char hex[2 * 64 + 1];
    struct xen_domctl op = { .cmd = XEN_DOMCTL_getstats };

    reply_line(r, "xen_major", "%u", xen_major_version());
    reply_line(r, "xen_minor", "%u", xen_minor_version());
    reply_line(r, "xen_extra", "%s", xen_extra_version());
    reply_line(r, "xen_changeset", "%s", xen_changeset());
    if ( xen_build_id((const void **)&id, &len) == 0 && len <= 64 )
    {
        for ( i = 0; i < len; i++ )
            snprintf(hex + 2 * i, 3, "%02x", id[i]);
        hex[2 * len] = '\0';
        reply_line(r, "build_id", "%s", hex);
    }
    if ( do_domctl(&op) == 0 )
        reply_line(r, "domctl_calls", "%lu", (unsigned long)op.u.getstats.calls);
    return 0;
}

static const struct {
    const char *name;
    uint32_t cmd;
    unsigned int nargs;
} domctl_names[] = {
    { "create", XEN_DOMCTL_createdomain, 1 },
    { "destroy", XEN_DOMCTL_destroydomain, 1 },
    { "pause", XEN_DOMCTL_pausedomain, 1 },
    { "unpause", XEN_DOMCTL_unpausedomain, 1 },
    { "getinfo", XEN_DOMCTL_getdomaininfo, 1 },
    { "max_vcpus", XEN_DOMCTL_max_vcpus, 2 },
    { "max_mem", XEN_DOMCTL_max_mem, 2 },
    { "settime", XEN_DOMCTL_settimeoffset, 2 },
    { "stats", XEN_DOMCTL_getstats, 0 },
};

static int parse_args(char *args, long *values, unsigned int max)
{
    unsigned int n = 0;

    while ( *args )
    {
        const char *end;

        while ( *args == ' ' )
            args++;
        if ( !*args )
            break;
        if ( n == max )
            return -E2BIG;
        values[n++] = simple_strtol(args, &end, 0);
        if ( end == args || (*end && *end != ' ') )
            return -EINVAL;
        args = (char *)end;
    }
    return n;
}

static long do_domctl_request(struct reply *r, char *args)
{
    struct xen_domctl op = { 0 };
    long values[2] = { 0 }, ret;
    char *space = strchr(args, ' ');
    unsigned int i;
    int n;

    if ( space )
        *space++ = '\0';
    for ( i = 0; i < ARRAY_SIZE(domctl_names); i++ )
        if ( !strcmp(args, domctl_names[i].name) )
            break;
    if ( i == ARRAY_SIZE(domctl_names) )
        return -ENOSYS;
    n = parse_args(space ? space : "", values, 2);
    if ( n < 0 || (unsigned int)n != domctl_names[i].nargs )
        return -EINVAL;

    op.cmd = domctl_names[i].cmd;
    op.domain = values[0];
    switch ( op.cmd )
    {
    case XEN_DOMCTL_max_vcpus:
        op.u.max_vcpus.max = values[1];
        break;
    case XEN_DOMCTL_max_mem:
        op.u.max_mem.max_memkb = values[1];
        break;
    case XEN_DOMCTL_settimeoffset:
        op.u.settimeoffset.time_offset_seconds = values[1];
        break;
    }

    ret = do_domctl(&op);
    if ( ret == 0 && op.cmd == XEN_DOMCTL_getdomaininfo )
    {
        reply_line(r, "domid", "%u", op.u.getdomaininfo.domain);
        reply_line(r, "flags", "%#x", op.u.getdomaininfo.flags);
        reply_line(r, "max_vcpus", "%u", op.u.getdomaininfo.max_vcpus);
        reply_line(r, "max_pages", "%lu", (unsigned long)op.u.getdomaininfo.max_pages);
        reply_line(r, "time_offset", "%ld", (long)op.u.getdomaininfo.time_offset);
    }
    if ( ret == 0 && op.cmd == XEN_DOMCTL_getstats )
        reply_line(r, "domctl_calls", "%lu", (unsigned long)op.u.getstats.calls);
    return ret;
}

/* "evtchn OP PORT": an event channel operation (EVTCHNOP_* by number), as the hypercall makes it. */
static long do_evtchn_request(char *args)
{
    long values[2] = { 0 };

    if ( parse_args(args, values, 2) != 2 )
        return -EINVAL;
    return do_event_channel_op(values[0], values[1]);
}

/* Handle one request line; the answer goes into buf. Returns 1 when asked to stop. */
int handle_request(char *line, char *buf, size_t size, size_t *len)
{
    struct reply r = { buf, size, 0 };
    long ret;
    int stop = 0;

    if ( !strcmp(line, "info") )
        ret = do_info(&r);
    else if ( starts_with(line, "domctl ") )
        ret = do_domctl_request(&r, line + 7);
    else if ( starts_with(line, "evtchn ") )
        ret = do_evtchn_request(line + 7);
    else if ( starts_with(line, "livepatch ") )
        ret = livepatch_request(line + 10, r.buf, r.size, &r.len);
    else if ( !strcmp(line, "quit") )
    {
        ret = 0;
        stop = 1;
    }
    else
        ret = -ENOSYS;

    r.len += snprintf(r.buf + r.len, r.size - r.len, "= %ld\n", ret);
    if ( r.len >= r.size )
        r.len = r.size - 1;
    *len = r.len;
    return stop;
}
