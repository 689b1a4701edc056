/* Virtual CPU accounting (xen/common/sched, cut down): code gcc clones and splits. */
#ifndef __XEN_VCPU_H__
#define __XEN_VCPU_H__

#include <xen/types.h>

#define __cold __attribute__((__cold__))

struct vcpu_acct {
    int id;
    int state;
    long credit[8];
    long runtime;
};

long vcpu_account(struct vcpu_acct *v, long delta);
long vcpu_total_weight(struct vcpu_acct *a, struct vcpu_acct *b);
int vcpu_slot_a(int key);
int vcpu_slot_b(int key);
int vcpu_slot_c(int key);
long vcpu_scaled(long x);
long vcpu_scaled_down(long x);

#endif /* __XEN_VCPU_H__ */
