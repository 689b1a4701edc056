/* Bug frames: what a ud2 at a given address means (xen/arch/x86/traps.c, do_bug_frame). */
#include <xen/lib.h>
#include <xen/livepatch.h>

static const struct bug_frame *const stop_frames[BUGFRAME_NR] = {
    __stop_bug_frames_0, __stop_bug_frames_1,
    __stop_bug_frames_2, __stop_bug_frames_3,
};

static const struct bug_frame *find_frame(unsigned long addr, unsigned int *type)
{
    const struct bug_frame *bug = __start_bug_frames;
    unsigned int id;

    for ( id = 0; id < BUGFRAME_NR; id++ )
    {
        unsigned int size = id == BUGFRAME_assert ? 16 : 8;

        for ( ; bug < stop_frames[id];
              bug = (const void *)bug + size )
        {
            if ( (unsigned long)bug_loc(bug) == addr )
            {
                *type = id;
                return bug;
            }
        }
    }
    return NULL;
}

/* Returns 0 when execution may continue after *rip has been adjusted. */
int do_bug_frame(unsigned long *rip)
{
    const struct bug_frame *bug;
    unsigned int type;
    const char *file;
    unsigned int line;

    bug = find_frame(*rip, &type);
    if ( !bug ) /* Xen's virtual regions: the payloads' own bug frames */
        bug = livepatch_find_bug_frame(*rip, &type);
    if ( !bug )
        return -1;

    if ( type == BUGFRAME_run_fn )
    {
        void (*fn)(void) = (void *)bug_ptr(bug);

        fn();
        *rip += 2;
        return 0;
    }

    file = bug_ptr(bug);
    line = bug_line(bug);

    if ( type == BUGFRAME_warn )
    {
        printk("Xen WARN at %s:%u\n", file, line);
        *rip += 2;
        return 0;
    }

    if ( type == BUGFRAME_bug )
        panic("Xen BUG at %s:%u", file, line);

    panic("Assertion '%s' failed at %s:%u", bug_msg(bug), file, line);
}
