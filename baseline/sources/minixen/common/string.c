/* The string functions gcc may call even in freestanding code. */
#include <xen/lib.h>

void *memcpy(void *dest, const void *src, size_t n)
{
    char *d = dest;
    const char *s = src;

    while ( n-- )
        *d++ = *s++;
    return dest;
}

void *memmove(void *dest, const void *src, size_t n)
{
    char *d = dest;
    const char *s = src;

    if ( d < s )
        return memcpy(dest, src, n);
    while ( n-- )
        d[n] = s[n];
    return dest;
}

void *memset(void *s, int c, size_t n)
{
    char *p = s;

    while ( n-- )
        *p++ = c;
    return s;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const unsigned char *x = a, *y = b;

    for ( ; n; n--, x++, y++ )
        if ( *x != *y )
            return *x - *y;
    return 0;
}

size_t strlen(const char *s)
{
    const char *p = s;

    while ( *p )
        p++;
    return p - s;
}

int strcmp(const char *a, const char *b)
{
    while ( *a && *a == *b )
        a++, b++;
    return (unsigned char)*a - (unsigned char)*b;
}

char *strchr(const char *s, int c)
{
    for ( ; *s != (char)c; s++ )
        if ( !*s )
            return NULL;
    return (char *)s;
}

long simple_strtol(const char *cp, const char **endp, unsigned int base)
{
    long sign = 1, value = 0;

    if ( *cp == '-' )
    {
        sign = -1;
        cp++;
    }
    if ( base == 0 )
        base = (cp[0] == '0' && (cp[1] == 'x' || cp[1] == 'X')) ? (cp += 2, 16) : 10;
    for ( ;; cp++ )
    {
        unsigned int digit;

        if ( *cp >= '0' && *cp <= '9' )
            digit = *cp - '0';
        else if ( (*cp | 0x20) >= 'a' && (*cp | 0x20) <= 'f' )
            digit = (*cp | 0x20) - 'a' + 10;
        else
            break;
        if ( digit >= base )
            break;
        value = value * base + digit;
    }
    if ( endp )
        *endp = cp;
    return sign * value;
}
