/* The x86 half of system time (xen/arch/x86/time.c, cut down): the TSC as the platform clock. */
#include <xen/lib.h>

static unsigned long tsc;

static noinline unsigned long read_clock(void)
{
    return tsc += 3;
}

unsigned long get_tsc_time(void)
{
    return read_clock() << 1;
}
