/* A small vsnprintf: the conversions minixen prints with, nothing more. */
#include <xen/lib.h>

struct out {
    char *buf;
    size_t size, len;
};

static void put(struct out *o, char c)
{
    if ( o->len + 1 < o->size )
        o->buf[o->len] = c;
    o->len++;
}

static void number(struct out *o, unsigned long long value, unsigned int base,
                   bool negative, int width, char pad, const char *prefix)
{
    static const char digits[] = "0123456789abcdef";
    char tmp[24];
    int n = 0;

    do {
        tmp[n++] = digits[value % base];
        value /= base;
    } while ( value );
    width -= n + negative + (prefix ? strlen(prefix) : 0);
    if ( pad == ' ' )
        while ( width-- > 0 )
            put(o, ' ');
    if ( negative )
        put(o, '-');
    while ( prefix && *prefix )
        put(o, *prefix++);
    while ( width-- > 0 )
        put(o, '0');
    while ( n )
        put(o, tmp[--n]);
}

int vsnprintf(char *buf, size_t size, const char *fmt, va_list args)
{
    struct out o = { buf, size, 0 };

    for ( ; *fmt; fmt++ )
    {
        bool alt = false;
        char pad = ' ';
        int width = 0, longs = 0;
        unsigned long long value;

        if ( *fmt != '%' )
        {
            put(&o, *fmt);
            continue;
        }
        fmt++;
        for ( ;; fmt++ )
        {
            if ( *fmt == '#' )
                alt = true;
            else if ( *fmt == '0' )
                pad = '0';
            else
                break;
        }
        while ( *fmt >= '0' && *fmt <= '9' )
            width = width * 10 + *fmt++ - '0';
        while ( *fmt == 'l' )
        {
            longs++;
            fmt++;
        }
        switch ( *fmt )
        {
        case 's':
        {
            const char *s = va_arg(args, const char *);

            if ( !s )
                s = "(null)";
            for ( width -= strlen(s); width-- > 0; )
                put(&o, ' ');
            while ( *s )
                put(&o, *s++);
            break;
        }
        case 'c':
            put(&o, va_arg(args, int));
            break;
        case 'd':
        {
            long long v = longs ? va_arg(args, long long) : va_arg(args, int);

            number(&o, v < 0 ? -(unsigned long long)v : v, 10, v < 0, width, pad, NULL);
            break;
        }
        case 'u':
        case 'x':
            value = longs ? va_arg(args, unsigned long long) : va_arg(args, unsigned int);
            number(&o, value, *fmt == 'u' ? 10 : 16, false, width, pad,
                   alt && *fmt == 'x' ? "0x" : NULL);
            break;
        case 'p':
            number(&o, (unsigned long)va_arg(args, void *), 16, false, width, pad, "0x");
            break;
        case '%':
            put(&o, '%');
            break;
        default:
            put(&o, '%');
            if ( !*fmt )
                goto out;
            put(&o, *fmt);
        }
    }
 out:
    if ( size )
        buf[o.len < size ? o.len : size - 1] = '\0';
    return o.len;
}

int snprintf(char *buf, size_t size, const char *fmt, ...)
{
    va_list args;
    int len;

    va_start(args, fmt);
    len = vsnprintf(buf, size, fmt, args);
    va_end(args);
    return len;
}
