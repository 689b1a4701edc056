/*
 * Virtual CPU accounting. Written the way gcc likes to clone and split:
 * an unlikely error path calling a cold function (vcpu_account.cold),
 * a static function reading one field of a struct (vcpu_weight.isra.N),
 * a static function always called with the same constant (scale.constprop.N)
 * and an early-exit function partially inlined into its callers (slot_lookup.part.N).
 */
#include <xen/lib.h>
#include <xen/errno.h>
#include <xen/vcpu.h>

static int slots[64];

static noinline __cold void vcpu_complain(const struct vcpu_acct *v, long delta)
{
    printk("vcpu %d: accounting went backwards by %ld\n", v->id, delta);
}

long vcpu_account(struct vcpu_acct *v, long delta)
{
    if ( unlikely(delta < 0) )
    {
        vcpu_complain(v, delta);
        v->state = 3;
        v->credit[2] = delta;
        return -EINVAL;
    }
    v->runtime += delta;
    return v->runtime;
}

static noinline long vcpu_weight(const struct vcpu_acct *v)
{
    return v->runtime * 3 + 7;
}

long vcpu_total_weight(struct vcpu_acct *a, struct vcpu_acct *b)
{
    return vcpu_weight(a) + vcpu_weight(b);
}

static noinline long scale(long x, long factor)
{
    return x * factor + factor / 3;
}

long vcpu_scaled(long x)
{
    return scale(x, 7) + 1;
}

long vcpu_scaled_down(long x)
{
    return scale(x, 7) - 1;
}

static int slot_lookup(int key)
{
    int i;

    if ( key < 0 )
        return -1;
    for ( i = 0; i < 64; i++ )
    {
        if ( slots[i] == key )
        {
            printk("vcpu: slot %d holds %d\n", i, key);
            slots[i] = slots[(i + 1) & 63] ^ key;
            return i;
        }
    }
    printk("vcpu: no slot holds %d\n", key);
    return -2;
}

int vcpu_slot_a(int key)
{
    return slot_lookup(key) + 1;
}

int vcpu_slot_b(int key)
{
    return slot_lookup(key * 2) + 2;
}

int vcpu_slot_c(int key)
{
    return slot_lookup(key * 3) + 3;
}
