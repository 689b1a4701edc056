/*
 * CPUs (xen/arch/x86/cpu/common.c, percpu.c, cut down): per-CPU state, the vendor hooks
 * that run once per CPU at bring-up, and boot parameters whose table points into init code.
 */
#include <xen/lib.h>
#include <xen/errno.h>
#include <xen/percpu.h>
#include <xen/sched.h>

/* The file's statics are reached through the section (.bss.percpu+offset), its globals by name. */
DEFINE_PER_CPU(struct vcpu *, curr_vcpu);
static DEFINE_PER_CPU(unsigned long, cpu_ticks);
static DEFINE_PER_CPU(unsigned int, cpu_msr_cfg);
DEFINE_PER_CPU(unsigned int, cpu_nr_switches);

/* A CPU's identity, private to this file (Xen's struct cpuinfo_x86, cut down). */
struct cpu_info {
    unsigned int vendor;
    unsigned int family;
    unsigned long features;
};

/* An erratum description, read through a pointer by code outside the bring-up path. */
struct cpu_quirk {
    unsigned int mask;
    unsigned int family;
};

struct cpu_dev {
    const char *name;
    void (*c_init)(struct cpu_info *c);
};

/* Vendor init routines: each writes its MSR once per CPU, when the CPU comes up. */
static void init_amd(struct cpu_info *c)
{
    if ( c->family >= 0x17 )
        this_cpu(cpu_msr_cfg) = 0x10 | (c->features & 0x3);
    else
        this_cpu(cpu_msr_cfg) = 0;
}

static void init_intel(struct cpu_info *c)
{
    this_cpu(cpu_msr_cfg) = 0x1 | (c->features & 0xc);
}

static const struct cpu_dev amd_cpu_dev = { "AMD", init_amd };
static const struct cpu_dev intel_cpu_dev = { "Intel", init_intel };
static const struct cpu_dev *const cpu_devs[] = { &intel_cpu_dev, &amd_cpu_dev };

void identify_cpu(struct cpu_info *c)
{
    if ( c->vendor < ARRAY_SIZE(cpu_devs) )
        cpu_devs[c->vendor]->c_init(c);
}

/* Called at bring-up and on every context switch. */
static noinline void cpu_reset_ticks(unsigned long start)
{
    this_cpu(cpu_ticks) = start;
}

/* Bring a CPU up: at boot, and again on resume from suspend. */
void start_secondary(unsigned int vendor, unsigned int family)
{
    struct cpu_info c = { .vendor = vendor, .family = family, .features = 0x5 };

    identify_cpu(&c);
    cpu_reset_ticks(0);
}

void context_switch(struct vcpu *next)
{
    this_cpu(curr_vcpu) = next;
    this_cpu(cpu_nr_switches)++;
    cpu_reset_ticks(1);
}

unsigned long cpu_tick(void)
{
    return ++this_cpu(cpu_ticks);
}

int cpu_has_quirk(const struct cpu_quirk *q, unsigned int family)
{
    return q->family == family && (q->mask & this_cpu(cpu_msr_cfg));
}

/* Both refusals print the line that refused, through one shared printk call. */
long cpu_check_request(unsigned int cpu, unsigned int op)
{
    unsigned int line;

    if ( cpu >= NR_CPUS )
    {
        line = __LINE__;
        goto bad;
    }
    if ( op > 3 )
    {
        line = __LINE__;
        goto bad;
    }
    return this_cpu(cpu_nr_switches) + op;

 bad:
    printk("cpu: bad request %u/%u (line %u)\n", cpu, op, line);
    return -EINVAL;
}

/* Boot parameters: a table in ordinary data whose entries point into .init.text. */
struct kernel_param {
    const char *name;
    int (*setup)(const char *value);
};

#define custom_param(_name, _fn) \
    static struct kernel_param __param_##_fn __used __section(".data.param") = { _name, _fn }

static unsigned int opt_cpu_msr = 1;
static unsigned int opt_cpu_quirks;

static int __init parse_cpu_msr(const char *s)
{
    opt_cpu_msr = simple_strtol(s, NULL, 0);
    return 0;
}
custom_param("cpu-msr", parse_cpu_msr);

static int __init parse_cpu_quirks(const char *s)
{
    opt_cpu_quirks = simple_strtol(s, NULL, 16) & 0xff;
    return opt_cpu_quirks ? 0 : -EINVAL;
}
custom_param("cpu-quirks", parse_cpu_quirks);

unsigned int cpu_msr_option(void)
{
    return opt_cpu_msr | opt_cpu_quirks << 8;
}
