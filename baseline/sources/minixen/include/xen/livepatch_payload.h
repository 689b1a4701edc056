/*
 * What a payload may carry for the loader to run (xen/include/xen/livepatch_payload.h):
 * load and unload hooks (arrays of functions run when the payload is applied and reverted)
 * and single pre/post apply and revert hooks. A failing pre-apply or pre-revert hook stops
 * the action. The action hooks of Xen (.livepatch.hooks.apply/.revert, which replace the
 * loader's own patching) are not provided.
 */
#ifndef __XEN_LIVEPATCH_PAYLOAD_H__
#define __XEN_LIVEPATCH_PAYLOAD_H__

#include <xen/compiler.h>

typedef struct payload livepatch_payload_t;

typedef void livepatch_loadcall_t(void);
typedef void livepatch_unloadcall_t(void);
typedef int livepatch_precall_t(livepatch_payload_t *arg);
typedef void livepatch_postcall_t(livepatch_payload_t *arg);

#define LIVEPATCH_LOAD_HOOK(_fn) \
    livepatch_loadcall_t *__attribute__((weak)) \
        const livepatch_load_data_##_fn __attribute__((section(".livepatch.hooks.load"))) = _fn;

#define LIVEPATCH_UNLOAD_HOOK(_fn) \
    livepatch_unloadcall_t *__attribute__((weak)) \
        const livepatch_unload_data_##_fn __attribute__((section(".livepatch.hooks.unload"))) = _fn;

#define LIVEPATCH_PREAPPLY_HOOK(_fn) \
    livepatch_precall_t *__attribute__((weak, used)) \
        const livepatch_preapply_data_##_fn __attribute__((section(".livepatch.hooks.preapply"))) = _fn;

#define LIVEPATCH_POSTAPPLY_HOOK(_fn) \
    livepatch_postcall_t *__attribute__((weak, used)) \
        const livepatch_postapply_data_##_fn __attribute__((section(".livepatch.hooks.postapply"))) = _fn;

#define LIVEPATCH_PREREVERT_HOOK(_fn) \
    livepatch_precall_t *__attribute__((weak, used)) \
        const livepatch_prerevert_data_##_fn __attribute__((section(".livepatch.hooks.prerevert"))) = _fn;

#define LIVEPATCH_POSTREVERT_HOOK(_fn) \
    livepatch_postcall_t *__attribute__((weak, used)) \
        const livepatch_postrevert_data_##_fn __attribute__((section(".livepatch.hooks.postrevert"))) = _fn;

#endif /* __XEN_LIVEPATCH_PAYLOAD_H__ */
