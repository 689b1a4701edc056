/*
 * Live patching (xen/common/livepatch.c): payloads are uploaded, checked and linked
 * (state CHECKED), then applied and reverted at the quiescent point, listed, got and
 * unloaded. Requests ("livepatch upload|list|get|apply|revert|unload ...") answer
 * "key : value" lines and "= rc"; a refusal adds "error : why" and changes nothing.
 *
 * The quiescent point: minixen serves one request at a time (setup.c serve()). An
 * action only queues work; serve() calls livepatch_quiesce() once the request handler
 * has returned, when no handler and so no function a payload replaces is on the stack,
 * as Xen patches on the way out of a VMEXIT with every CPU rendezvoused.
 */
#include <xen/lib.h>
#include <xen/errno.h>
#include <xen/version.h>
#include <xen/livepatch.h>
#include <xen/livepatch_payload.h>
#include <asm/syscall_ext.h>
#include <asm/alternative.h>

_Static_assert(sizeof(struct livepatch_func) == 104, "struct livepatch_func is 104 bytes (version 2)");

/* Payloads live in the low 2 GiB, above the image, so a rel32 reaches both ways. */
#define PAYLOAD_AREA_START 0x10000000UL
#define PAYLOAD_AREA_END   0x70000000UL
#define BUILD_ID_MAX       64

/* A payload's named symbol (Xen's struct livepatch_symbol): new ones resolve for later payloads. */
struct payload_symbol {
    const char *name;
    unsigned long value, size;
    bool new_symbol;
};

struct func_state {
    uint8_t insn[ARCH_PATCH_INSN_SIZE];
    unsigned int offset;
};

struct payload {
    bool used;
    char name[LIVEPATCH_NAME_SIZE];
    int state, rc;
    unsigned int applied_order;
    uint8_t *mem;
    size_t mem_size, text_size, rw_size, ro_size;
    uint8_t *text_addr, *rw_addr, *ro_addr;
    struct livepatch_func *funcs;
    unsigned int nfuncs;
    struct func_state fstate[LIVEPATCH_MAX_FUNCS];
    const struct bug_frame *bugs[BUGFRAME_NR];
    unsigned int nbugs[BUGFRAME_NR];
    livepatch_loadcall_t *const *load_funcs;
    livepatch_unloadcall_t *const *unload_funcs;
    unsigned int n_load_funcs, n_unload_funcs;
    struct {
        livepatch_precall_t *const *pre;
        livepatch_postcall_t *const *post;
    } apply_hooks, revert_hooks;
    struct payload_symbol *symtab;
    char *strtab;
    unsigned int nsyms;
    size_t symtab_size, strtab_size;
    uint8_t build_id[BUILD_ID_MAX], depends[BUILD_ID_MAX];
    unsigned int build_id_len, depends_len;
    char sections[1024];
    char error[128];
};

static struct payload payloads[LIVEPATCH_MAX_PAYLOADS];
static unsigned int applied_count;
static struct {
    struct payload *data;
    unsigned int cmd;
} pending;
static struct {
    void *data;
    size_t size;
} body;
static char error[256];

int livepatch_fail(int rc, const char *fmt, ...)
{
    va_list args;

    if ( error[0] )
        return rc; /* keep the first reason: it is the cause */
    va_start(args, fmt);
    vsnprintf(error, sizeof(error), fmt, args);
    va_end(args);
    printk("livepatch: %s\n", error);
    return rc;
}

void *livepatch_alloc(size_t size)
{
    void *p = sys_mmap(0, PAGE_ALIGN(size ? size : 1), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                       -1, 0);

    return sys_failed((long)p) ? NULL : p;
}

void livepatch_free(void *p, size_t size)
{
    sys_munmap(p, PAGE_ALIGN(size ? size : 1));
}

/* Writable memory near the image; made RX / RW / R once linked (arch_livepatch_secure). */
static void *payload_alloc(size_t size)
{
    unsigned long hint;

    for ( hint = PAYLOAD_AREA_START; hint + size <= PAYLOAD_AREA_END; hint += PAGE_ALIGN(size) )
    {
        void *p = sys_mmap(hint, size, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);

        if ( (unsigned long)p == hint )
            return p;
        if ( !sys_failed((long)p) )
            sys_munmap(p, size); /* a kernel that ignored the hint */
    }
    return NULL;
}

static struct payload *find_payload(const char *name)
{
    unsigned int i;

    for ( i = 0; i < LIVEPATCH_MAX_PAYLOADS; i++ )
        if ( payloads[i].used && !strcmp(payloads[i].name, name) )
            return &payloads[i];
    return NULL;
}

static void calc_section(const Elf64_Shdr *s, size_t *size, size_t *offset)
{
    size_t align = s->sh_addralign ? s->sh_addralign : 1;

    *offset = (*size + align - 1) & ~(align - 1);
    *size = *offset + s->sh_size;
}

/* Lay the allocated sections out in text (RX), rw (RW) and ro (R) regions and copy them in. */
static int move_payload(struct payload *payload, struct livepatch_elf *elf)
{
    size_t offset[1024];
    unsigned int i;

    for ( i = 1; i < elf->hdr->e_shnum; i++ )
    {
        uint64_t flags = elf->sec[i].sec->sh_flags;

        if ( livepatch_elf_ignore_section(elf->sec[i].sec) )
            continue;
        if ( elf->sec[i].sec->sh_size > LIVEPATCH_MAX_SIZE )
            return livepatch_fail(-EINVAL, "%s: section %s is too large", elf->name, elf->sec[i].name);
        if ( (flags & SHF_EXECINSTR) && !(flags & SHF_WRITE) )
            calc_section(elf->sec[i].sec, &payload->text_size, &offset[i]);
        else if ( !(flags & SHF_EXECINSTR) && (flags & SHF_WRITE) )
            calc_section(elf->sec[i].sec, &payload->rw_size, &offset[i]);
        else if ( !(flags & SHF_EXECINSTR) )
            calc_section(elf->sec[i].sec, &payload->ro_size, &offset[i]);
        else
            return livepatch_fail(-EOPNOTSUPP, "%s: section %s is writable and executable: not supported",
                                  elf->name, elf->sec[i].name);
    }
    payload->mem_size = PAGE_ALIGN(payload->text_size) + PAGE_ALIGN(payload->rw_size) +
                        PAGE_ALIGN(payload->ro_size);
    payload->mem = payload_alloc(payload->mem_size);
    if ( !payload->mem )
        return livepatch_fail(-ENOMEM, "%s: could not allocate memory for payload", elf->name);
    payload->text_addr = payload->mem;
    payload->rw_addr = payload->text_addr + PAGE_ALIGN(payload->text_size);
    payload->ro_addr = payload->rw_addr + PAGE_ALIGN(payload->rw_size);
    for ( i = 1; i < elf->hdr->e_shnum; i++ )
    {
        const Elf64_Shdr *s = elf->sec[i].sec;

        if ( livepatch_elf_ignore_section(s) )
            continue;
        if ( (s->sh_flags & SHF_EXECINSTR) )
            elf->sec[i].load_addr = payload->text_addr + offset[i];
        else if ( s->sh_flags & SHF_WRITE )
            elf->sec[i].load_addr = payload->rw_addr + offset[i];
        else
            elf->sec[i].load_addr = payload->ro_addr + offset[i];
        if ( s->sh_type != SHT_NOBITS )
            memcpy(elf->sec[i].load_addr, elf->sec[i].data, s->sh_size);
    }
    return 0;
}

static int secure_payload(struct payload *payload)
{
    int rc = arch_livepatch_secure(payload->text_addr, payload->text_size, PROT_READ | PROT_EXEC);

    if ( !rc )
        rc = arch_livepatch_secure(payload->rw_addr, payload->rw_size, PROT_READ | PROT_WRITE);
    if ( !rc )
        rc = arch_livepatch_secure(payload->ro_addr, payload->ro_size, PROT_READ);
    return rc;
}

/* Does the loader find this section by name and read it once loaded? */
static bool loader_reads(const char *name)
{
    static const char *const tables[] = {
        ".livepatch.depends", ".livepatch.xen_depends", ".note.gnu.build-id", ".livepatch.funcs",
        ".bug_frames.0", ".bug_frames.1", ".bug_frames.2", ".bug_frames.3", ".altinstructions",
        ".altinstr_replacement", ".ex_table", ".modinfo",
    };
    unsigned int i;

    for ( i = 0; i < ARRAY_SIZE(tables); i++ )
        if ( !strcmp(name, tables[i]) )
            return true;
    return !memcmp(name, ".livepatch.hooks.", 17);
}

/*
 * Xen 4.17 takes each table at its load address, which an unallocated section does not
 * have (NULL): its first lookup would crash. Refused here, as xsplice-build verify does.
 */
static int check_tables_allocated(const struct livepatch_elf *elf)
{
    unsigned int i;

    for ( i = 1; i < elf->hdr->e_shnum; i++ )
        if ( loader_reads(elf->sec[i].name) &&
             (livepatch_elf_ignore_section(elf->sec[i].sec) || elf->sec[i].sec->sh_type == SHT_NOBITS) )
            return livepatch_fail(-EINVAL, "%s: section [%u] %s: the loader reads this table: it must be "
                                  "allocated, with contents", elf->name, i, elf->sec[i].name);
    return 0;
}

static int check_special_sections(const struct livepatch_elf *elf)
{
    static const char *const names[] = {
        ".livepatch.depends", ".livepatch.xen_depends", ".note.gnu.build-id", ".livepatch.funcs",
    };
    unsigned int i, j;

    for ( i = 0; i < ARRAY_SIZE(names); i++ )
    {
        const struct livepatch_elf_sec *sec = livepatch_elf_sec_by_name(elf, names[i]);

        if ( !sec )
            return livepatch_fail(-EINVAL, "%s: %s is missing", elf->name, names[i]);
        if ( !sec->sec->sh_size )
            return livepatch_fail(-EINVAL, "%s: %s is empty", elf->name, names[i]);
        for ( j = sec - elf->sec + 1; j < elf->hdr->e_shnum; j++ )
            if ( !strcmp(elf->sec[j].name, names[i]) )
                return livepatch_fail(-EINVAL, "%s: %s was seen more than once", elf->name, names[i]);
    }
    return check_tables_allocated(elf);
}

/* The descriptor of the GNU build-id note in `sec` (after relocation, in payload memory). */
static int note_build_id(const struct livepatch_elf *elf, const struct livepatch_elf_sec *sec,
                         const uint8_t **id, unsigned int *len)
{
    const Elf64_Note *n = sec->load_addr;
    uint64_t need;

    if ( sec->sec->sh_size < sizeof(*n) )
        return livepatch_fail(-EINVAL, "%s: %s is too small for a note", elf->name, sec->name);
    need = sizeof(*n) + (((uint64_t)n->n_namesz + 3) & ~3ULL) + n->n_descsz;
    if ( need > sec->sec->sh_size || n->n_type != 3 || n->n_namesz != 4 ||
         memcmp(n + 1, "GNU", 4) || !n->n_descsz || n->n_descsz > BUILD_ID_MAX )
        return livepatch_fail(-EINVAL, "%s: %s is not a GNU build-id note", elf->name, sec->name);
    *id = (const uint8_t *)(n + 1) + 4;
    *len = n->n_descsz;
    return 0;
}

static struct payload *top_applied(void)
{
    unsigned int i;

    for ( i = 0; i < LIVEPATCH_MAX_PAYLOADS; i++ )
        if ( payloads[i].used && payloads[i].state == LIVEPATCH_STATE_APPLIED &&
             payloads[i].applied_order == applied_count )
            return &payloads[i];
    return NULL;
}

/*
 * .livepatch.depends names what this payload goes on: the last applied payload, else the image;
 * `against_image` (REPLACE) checks against the image whatever is applied.
 */
static int build_id_dep(const struct payload *payload, const uint8_t *dep, unsigned int dep_len,
                        bool against_image)
{
    const struct payload *top = against_image ? NULL : top_applied();
    const void *id;
    unsigned int len;

    if ( top )
    {
        id = top->build_id;
        len = top->build_id_len;
    }
    else if ( xen_build_id(&id, &len) )
        return livepatch_fail(-EINVAL, "%s: the running image has no build-id", payload->name);
    if ( dep_len != len || memcmp(dep, id, len) )
        return livepatch_fail(-EINVAL, "%s: check against %s build-id failed (.livepatch.depends)",
                              payload->name, top ? top->name : "hypervisor");
    return 0;
}

static int xen_build_id_dep(const struct payload *payload, const uint8_t *dep, unsigned int dep_len)
{
    const void *id;
    unsigned int len;

    if ( xen_build_id(&id, &len) || dep_len != len || memcmp(dep, id, len) )
        return livepatch_fail(-EINVAL, "%s: check against hypervisor build-id failed "
                              "(.livepatch.xen_depends): built for another image", payload->name);
    return 0;
}

static int check_dependencies(struct payload *payload, const struct livepatch_elf *elf)
{
    const uint8_t *id;
    unsigned int len;
    int rc;

    rc = note_build_id(elf, livepatch_elf_sec_by_name(elf, ".livepatch.xen_depends"), &id, &len);
    if ( !rc )
        rc = xen_build_id_dep(payload, id, len);
    /* .livepatch.depends is checked when applying, against what is applied then (as Xen does). */
    if ( !rc )
        rc = note_build_id(elf, livepatch_elf_sec_by_name(elf, ".livepatch.depends"), &id, &len);
    if ( rc )
        return rc;
    memcpy(payload->depends, id, len);
    payload->depends_len = len;
    rc = note_build_id(elf, livepatch_elf_sec_by_name(elf, ".note.gnu.build-id"), &id, &len);
    if ( rc )
        return rc;
    memcpy(payload->build_id, id, len);
    payload->build_id_len = len;
    return 0;
}

static bool in_region(const void *p, size_t size, const uint8_t *start, size_t region)
{
    return (const uint8_t *)p >= start && size <= region && (const uint8_t *)p - start <= (long)(region - size);
}

/* A function name must be a string inside the payload's read-only data. */
static int check_func_name(const struct payload *payload, const struct livepatch_func *f)
{
    const char *p;

    for ( p = f->name; in_region(p, 1, payload->ro_addr, payload->ro_size); p++ )
        if ( !*p )
            return p == f->name ? livepatch_fail(-EINVAL, "%s: a function has an empty name", payload->name) : 0;
    return livepatch_fail(-EINVAL, "%s: a function name is not a string inside the payload", payload->name);
}

static bool in_payload_text(unsigned long addr)
{
    unsigned int i;

    for ( i = 0; i < LIVEPATCH_MAX_PAYLOADS; i++ )
        if ( payloads[i].used && in_region((void *)addr, 1, payloads[i].text_addr, payloads[i].text_size) )
            return true;
    return false;
}

/* old_addr and old_size must be what the running image's symbol table says of the name. */
static int check_old_function(const struct payload *payload, struct livepatch_func *f)
{
    unsigned long addr, size;
    int rc = symbols_lookup_by_name(f->name, &addr, &size);
    bool added = false;

    if ( rc == -EEXIST )
        return livepatch_fail(-EINVAL, "%s: function %s is ambiguous in the running image", payload->name,
                              f->name);
    /* A function an earlier payload added (old_addr 0): Xen's resolve_old_address looks there next. */
    if ( rc == -ENOENT && !f->old_addr )
        added = !(rc = livepatch_symbols_lookup_by_name(f->name, &addr, &size));
    if ( rc )
        return livepatch_fail(-ENOENT, "%s: could not resolve old address of %s", payload->name, f->name);
    if ( !f->old_addr )
        f->old_addr = (void *)addr;
    if ( (unsigned long)f->old_addr != addr || f->old_size != size )
        return livepatch_fail(-EINVAL, "%s: %s: old_addr %p / old_size %u do not match the running image "
                              "(%#lx, %lu bytes)", payload->name, f->name, f->old_addr, f->old_size, addr, size);
    /* Xen 4.17 writes the jump wherever old_addr points: into data, or the loader's own state. */
    if ( added ? !in_payload_text(addr) : !symbols_is_code(f->name) )
        return livepatch_fail(-EINVAL, "%s: %s is not a function in the image's text; only code can be "
                              "patched", payload->name, f->name);
    if ( symbols_is_init(addr) )
        return livepatch_fail(-EINVAL, "%s: %s is init code, freed after boot; it cannot be patched",
                              payload->name, f->name);
    return 0;
}

static int prepare_funcs(struct payload *payload, const struct livepatch_elf *elf)
{
    const struct livepatch_elf_sec *sec = livepatch_elf_sec_by_name(elf, ".livepatch.funcs");
    unsigned int i;
    int rc;

    if ( sec->sec->sh_size % sizeof(struct livepatch_func) )
        return livepatch_fail(-EINVAL, "%s: wrong size %lu of .livepatch.funcs (must be multiple of %u)",
                              elf->name, (unsigned long)sec->sec->sh_size, (unsigned int)sizeof(struct livepatch_func));
    payload->funcs = sec->load_addr;
    payload->nfuncs = sec->sec->sh_size / sizeof(struct livepatch_func);
    if ( payload->nfuncs > LIVEPATCH_MAX_FUNCS )
        return livepatch_fail(-E2BIG, "%s: %u functions, at most %u", elf->name, payload->nfuncs,
                              LIVEPATCH_MAX_FUNCS);
    for ( i = 0; i < payload->nfuncs; i++ )
    {
        struct livepatch_func *f = &payload->funcs[i];

        if ( f->version != LIVEPATCH_PAYLOAD_VERSION )
            return livepatch_fail(-EOPNOTSUPP, "%s: wrong version (%u). Expected %d", elf->name, f->version,
                                  LIVEPATCH_PAYLOAD_VERSION);
        if ( !f->old_size )
            return livepatch_fail(-EINVAL, "%s: address or size fields are zero", elf->name);
        rc = check_func_name(payload, f);
        if ( !rc )
            rc = check_old_function(payload, f);
        if ( !rc )
            rc = arch_livepatch_verify_func(f);
        if ( rc )
            return rc;
        if ( !in_region(f->new_addr, f->new_size, payload->text_addr, payload->text_size) )
            return livepatch_fail(-EINVAL, "%s: %s: new code is not inside the payload's text", elf->name,
                                  f->name);
        if ( (int64_t)(int32_t)((uint8_t *)f->new_addr - (uint8_t *)f->old_addr) !=
             (uint8_t *)f->new_addr - (uint8_t *)f->old_addr )
            return livepatch_fail(-EOVERFLOW, "%s: %s: new code is out of jump range", elf->name, f->name);
    }
    return 0;
}

/* Xen's is_payload_symbol: defined in a loaded section, named, not an assembler-local label. */
static bool is_payload_symbol(const struct livepatch_elf *elf, unsigned int i)
{
    const Elf64_Sym *sym = elf->sym[i].sym;
    const char *name = elf->sym[i].name;

    if ( sym->st_shndx == SHN_UNDEF || sym->st_shndx >= elf->hdr->e_shnum || elf->sym[i].ignored )
        return false;
    if ( !(elf->sec[sym->st_shndx].sec->sh_flags & SHF_ALLOC) || !*name )
        return false;
    return !((elf->sec[sym->st_shndx].sec->sh_flags & SHF_MERGE) && !memcmp(name, ".L", 2));
}

static bool replaces_a_function(const struct payload *payload, unsigned long value)
{
    unsigned int j;

    for ( j = 0; j < payload->nfuncs; j++ )
        if ( value == (unsigned long)payload->funcs[j].new_addr )
            return true;
    return false;
}

/* Xen's build_symbol_table: a symbol that replaces no function is new, and must be new everywhere. */
static int build_symbol_table(struct payload *payload, const struct livepatch_elf *elf)
{
    unsigned int i, n = 0;
    size_t used = 0;
    unsigned long addr, size;

    for ( i = 1; i < elf->nsym; i++ )
        if ( is_payload_symbol(elf, i) )
        {
            n++;
            payload->strtab_size += strlen(elf->sym[i].name) + 1;
        }
    payload->symtab_size = n * sizeof(*payload->symtab);
    payload->symtab = livepatch_alloc(payload->symtab_size);
    payload->strtab = livepatch_alloc(payload->strtab_size);
    if ( !payload->symtab || !payload->strtab )
        return livepatch_fail(-ENOMEM, "%s: no memory for the symbol table", elf->name);
    for ( i = 1; i < elf->nsym; i++ )
    {
        struct payload_symbol *s = &payload->symtab[payload->nsyms];
        size_t len;

        if ( !is_payload_symbol(elf, i) )
            continue;
        len = strlen(elf->sym[i].name) + 1;
        memcpy(payload->strtab + used, elf->sym[i].name, len);
        s->name = payload->strtab + used;
        used += len;
        s->value = elf->sym[i].value;
        s->size = elf->sym[i].sym->st_size;
        if ( !replaces_a_function(payload, s->value) )
        {
            /* The image's names are check_new_symbols' rule; the loaded payloads' are this one's. */
            if ( !livepatch_symbols_lookup_by_name(s->name, &addr, &size) )
                return livepatch_fail(-EEXIST, "%s: duplicate new symbol: %s", elf->name, s->name);
            s->new_symbol = true;
        }
        payload->nsyms++;
    }
    return 0;
}

int livepatch_symbols_lookup_by_name(const char *name, unsigned long *addr, unsigned long *size)
{
    unsigned int i, j;

    for ( i = 0; i < LIVEPATCH_MAX_PAYLOADS; i++ )
        for ( j = 0; payloads[i].used && j < payloads[i].nsyms; j++ )
            if ( payloads[i].symtab[j].new_symbol && !strcmp(payloads[i].symtab[j].name, name) )
            {
                *addr = payloads[i].symtab[j].value;
                *size = payloads[i].symtab[j].size;
                return 0;
            }
    return -ENOENT;
}

/* Xen's LIVEPATCH_ASSIGN_MULTI_HOOK: an array of pointers, the section a multiple of one. */
static int assign_multi_hook(const struct livepatch_elf *elf, const char *name, const void **hooks,
                             unsigned int *count)
{
    const struct livepatch_elf_sec *sec = livepatch_elf_sec_by_name(elf, name);

    if ( !sec )
        return 0;
    if ( !sec->sec->sh_size || sec->sec->sh_size % sizeof(void *) )
        return livepatch_fail(-EINVAL, "%s: wrong size %lu of %s (must be a multiple of %u)", elf->name,
                              (unsigned long)sec->sec->sh_size, name, (unsigned int)sizeof(void *));
    *hooks = sec->load_addr;
    *count = sec->sec->sh_size / sizeof(void *);
    return 0;
}

/* Xen's LIVEPATCH_ASSIGN_SINGLE_HOOK: exactly one pointer. */
static int assign_single_hook(const struct livepatch_elf *elf, const char *name, const void **hook)
{
    const struct livepatch_elf_sec *sec = livepatch_elf_sec_by_name(elf, name);

    if ( !sec )
        return 0;
    if ( sec->sec->sh_size != sizeof(void *) )
        return livepatch_fail(-EINVAL, "%s: wrong size %lu of %s (must be %u)", elf->name,
                              (unsigned long)sec->sec->sh_size, name, (unsigned int)sizeof(void *));
    *hook = sec->load_addr;
    return 0;
}

static int prepare_hooks(struct payload *payload, const struct livepatch_elf *elf)
{
    int rc = assign_multi_hook(elf, ".livepatch.hooks.load", (const void **)&payload->load_funcs,
                               &payload->n_load_funcs);

    if ( !rc )
        rc = assign_multi_hook(elf, ".livepatch.hooks.unload", (const void **)&payload->unload_funcs,
                               &payload->n_unload_funcs);
    if ( !rc )
        rc = assign_single_hook(elf, ".livepatch.hooks.preapply", (const void **)&payload->apply_hooks.pre);
    if ( !rc )
        rc = assign_single_hook(elf, ".livepatch.hooks.postapply", (const void **)&payload->apply_hooks.post);
    if ( !rc )
        rc = assign_single_hook(elf, ".livepatch.hooks.prerevert", (const void **)&payload->revert_hooks.pre);
    if ( !rc )
        rc = assign_single_hook(elf, ".livepatch.hooks.postrevert",
                                (const void **)&payload->revert_hooks.post);
    if ( !rc && (livepatch_elf_sec_by_name(elf, ".livepatch.hooks.apply") ||
                 livepatch_elf_sec_by_name(elf, ".livepatch.hooks.revert")) )
        rc = livepatch_fail(-EOPNOTSUPP, "%s: apply and revert action hooks are not supported", elf->name);
    return rc;
}

static bool has_vetoing_hooks(const struct payload *payload)
{
    return payload->apply_hooks.pre || payload->apply_hooks.post || payload->revert_hooks.pre ||
           payload->revert_hooks.post;
}

static void prepare_bug_frames(struct payload *payload, const struct livepatch_elf *elf, int *rc)
{
    unsigned int i;

    for ( i = 0; i < BUGFRAME_NR && !*rc; i++ )
    {
        char name[16];
        const struct livepatch_elf_sec *sec;
        size_t size = i == BUGFRAME_assert ? 16 : 8;

        snprintf(name, sizeof(name), ".bug_frames.%u", i);
        sec = livepatch_elf_sec_by_name(elf, name);
        if ( !sec )
            continue;
        if ( sec->sec->sh_size % size )
            *rc = livepatch_fail(-EINVAL, "%s: wrong size %lu of %s (must be multiple of %lu)", elf->name,
                                 (unsigned long)sec->sec->sh_size, name, (unsigned long)size);
        payload->bugs[i] = sec->load_addr;
        payload->nbugs[i] = sec->sec->sh_size / size;
    }
}

static int payload_poke(void *addr, const uint8_t *bytes, size_t len)
{
    memcpy(addr, bytes, len);
    return 0;
}

/* prepare_payload: every alternative's original in the payload's text, its replacement in the
 * first .altinstr_replacement (the one found by name), zero-length ones included; then applied. */
static int check_alternatives(const struct payload *payload, const struct livepatch_elf *elf)
{
    const struct livepatch_elf_sec *sec = livepatch_elf_sec_by_name(elf, ".altinstructions"), *repl_sec;
    const struct alt_instr *a, *end;

    if ( !sec )
        return 0;
    if ( sec->sec->sh_size % sizeof(*a) )
        return livepatch_fail(-EINVAL, "%s: wrong size %lu of .altinstructions (must be multiple of %u)",
                              elf->name, (unsigned long)sec->sec->sh_size, (unsigned int)sizeof(*a));
    if ( !sec->sec->sh_size )
        return 0;
    if ( !payload->text_size )
        return livepatch_fail(-EINVAL, "%s: alternatives provided, but no .text", elf->name);
    repl_sec = livepatch_elf_sec_by_name(elf, ".altinstr_replacement");
    if ( !repl_sec )
        return livepatch_fail(-EINVAL, "%s: .altinstructions provided, but no .altinstr_replacement", elf->name);
    end = (const void *)((const uint8_t *)sec->load_addr + sec->sec->sh_size);
    for ( a = sec->load_addr; a < end; a++ )
    {
        const uint8_t *orig = (const uint8_t *)&a->orig_offset + a->orig_offset;
        const uint8_t *repl = (const uint8_t *)&a->repl_offset + a->repl_offset;

        /* Xen 4.17's _apply_alternatives BUG()s on these (a crash): refused. */
        if ( a->repl_len > a->orig_len + a->pad_len || a->orig_len + a->pad_len > ALT_MAX_PATCH_LEN ||
             (a->cpuid & ~ALT_FLAG_NOT) >= ALT_FEATURES )
            return livepatch_fail(-EINVAL, "%s: alternative repl_len %u, site %u+%u, feature %u: Xen's "
                                  "_apply_alternatives would BUG() on it", elf->name, a->repl_len, a->orig_len,
                                  a->pad_len, a->cpuid & ~ALT_FLAG_NOT);
        if ( !in_region(orig, a->orig_len, payload->text_addr, payload->text_size) )
            return livepatch_fail(-EINVAL, "%s: alternative orig %p+%#x outside payload text %p+%#lx", elf->name,
                                  orig, a->orig_len, payload->text_addr, (unsigned long)payload->text_size);
        if ( !in_region(repl, a->repl_len, repl_sec->load_addr, repl_sec->sec->sh_size) )
            return livepatch_fail(-EINVAL, "%s: alternative repl %p+%#x outside .altinstr_replacement %p+%#lx",
                                  elf->name, repl, a->repl_len, repl_sec->load_addr,
                                  (unsigned long)repl_sec->sec->sh_size);
    }
    /* Before secure_payload(): the payload's text is still writable. */
    apply_alternatives(sec->load_addr, (struct alt_instr *)end, payload_poke);
    return 0;
}

static int check_tables(const struct livepatch_elf *elf)
{
    const struct livepatch_elf_sec *sec = livepatch_elf_sec_by_name(elf, ".modinfo");
    const struct livepatch_elf_sec *ex = livepatch_elf_sec_by_name(elf, ".ex_table");

    /* struct exception_table_entry { s32 addr, cont; }: minixen has no faults to fix up, but checks it. */
    if ( ex && ex->sec->sh_size % 8 )
        return livepatch_fail(-EINVAL, "%s: wrong size %lu of .ex_table (must be multiple of 8)", elf->name,
                              (unsigned long)ex->sec->sh_size);
    if ( sec && sec->sec->sh_size && ((const char *)sec->load_addr)[sec->sec->sh_size - 1] )
        return livepatch_fail(-EINVAL, "%s: incorrect metadata format detected (.modinfo)", elf->name);
    return 0;
}

/* build_symbol_table: a named symbol that does not replace a function must be new to the image. */
static int check_new_symbols(const struct payload *payload, const struct livepatch_elf *elf)
{
    unsigned int i, j;

    for ( i = 1; i < elf->nsym; i++ )
    {
        const Elf64_Sym *s = elf->sym[i].sym;
        const char *name = elf->sym[i].name;
        unsigned long addr, size;
        bool replaces = false;

        if ( s->st_shndx == SHN_UNDEF || s->st_shndx >= elf->hdr->e_shnum ||
             livepatch_elf_ignore_section(elf->sec[s->st_shndx].sec) || !*name ||
             ((elf->sec[s->st_shndx].sec->sh_flags & SHF_MERGE) && !memcmp(name, ".L", 2)) )
            continue;
        for ( j = 0; j < payload->nfuncs && !replaces; j++ )
            replaces = elf->sym[i].value == (unsigned long)payload->funcs[j].new_addr;
        if ( !replaces && symbols_lookup_by_name(name, &addr, &size) != -ENOENT )
            return livepatch_fail(-EEXIST, "%s: duplicate new symbol: %s", elf->name, name);
    }
    return 0;
}

static void record_sections(struct payload *payload, const struct livepatch_elf *elf)
{
    size_t used = 0;
    unsigned int i;

    for ( i = 1; i < elf->hdr->e_shnum && used < sizeof(payload->sections); i++ )
        if ( !livepatch_elf_ignore_section(elf->sec[i].sec) )
            used += snprintf(payload->sections + used, sizeof(payload->sections) - used, "%s%s=%p",
                             used ? " " : "", elf->sec[i].name, elf->sec[i].load_addr);
}

static int load_payload_data(struct payload *payload, const void *raw, size_t len)
{
    struct livepatch_elf elf;
    int rc = livepatch_elf_load(&elf, payload->name, raw, len);

    if ( !rc )
        rc = check_special_sections(&elf);
    if ( !rc )
        rc = move_payload(payload, &elf);
    if ( !rc )
        rc = livepatch_elf_resolve_symbols(&elf);
    if ( !rc )
        rc = livepatch_elf_perform_relocs(&elf);
    if ( !rc )
        rc = check_dependencies(payload, &elf);
    if ( !rc )
        rc = prepare_funcs(payload, &elf);
    if ( !rc )
        prepare_bug_frames(payload, &elf, &rc);
    if ( !rc )
        rc = check_alternatives(payload, &elf);
    if ( !rc )
        rc = check_tables(&elf);
    if ( !rc )
        rc = check_new_symbols(payload, &elf);
    if ( !rc )
        rc = prepare_hooks(payload, &elf);
    if ( !rc )
        rc = build_symbol_table(payload, &elf);
    if ( !rc )
        record_sections(payload, &elf);
    if ( !rc )
        rc = secure_payload(payload);
    livepatch_elf_free(&elf);
    return rc;
}

static void free_payload(struct payload *payload)
{
    if ( payload->mem )
        sys_munmap(payload->mem, payload->mem_size);
    if ( payload->symtab )
        livepatch_free(payload->symtab, payload->symtab_size);
    if ( payload->strtab )
        livepatch_free(payload->strtab, payload->strtab_size);
    memset(payload, 0, sizeof(*payload));
}

/*
 * Xen's rules for a payload name: 1 to XEN_LIVEPATCH_NAME_SIZE - 1 bytes before the NUL
 * (get_name()), of the characters livepatch-build gives names (A-Z a-z 0-9 _ -), and + (a
 * cumulative payload is named after the advisories it carries, stack-1+stack-2). Every
 * request that names a payload is checked, so a name never reaches a lookup or an answer
 * line unchecked.
 */
static bool valid_name(const char *name)
{
    size_t len = strlen(name), i;

    if ( !len || len >= LIVEPATCH_NAME_SIZE )
        return false;
    for ( i = 0; i < len; i++ )
        if ( !((name[i] >= 'a' && name[i] <= 'z') || (name[i] >= 'A' && name[i] <= 'Z') ||
               (name[i] >= '0' && name[i] <= '9') || name[i] == '-' || name[i] == '_' || name[i] == '+') )
            return false;
    return true;
}

static int livepatch_upload(const char *name, const char *size_text)
{
    struct payload *payload = NULL;
    const char *end;
    long size = simple_strtol(size_text, &end, 10);
    unsigned int i;
    int rc;

    if ( body.size > LIVEPATCH_MAX_SIZE )
        return livepatch_fail(-E2BIG, "%s: payload is %lu bytes, at most %lu", name, (unsigned long)body.size,
                              LIVEPATCH_MAX_SIZE);
    if ( *end || size <= 0 || (size_t)size != body.size || !body.data )
        return livepatch_fail(-EINVAL, "%s: upload carries %lu bytes, the request says %s", name,
                              (unsigned long)body.size, size_text);
    if ( find_payload(name) )
        return livepatch_fail(-EEXIST, "%s: a payload of that name is already loaded", name);
    for ( i = 0; i < LIVEPATCH_MAX_PAYLOADS && !payload; i++ )
        if ( !payloads[i].used )
            payload = &payloads[i];
    if ( !payload )
        return livepatch_fail(-ENOSPC, "%s: %u payloads are loaded already", name, LIVEPATCH_MAX_PAYLOADS);
    memcpy(payload->name, name, strlen(name) + 1);
    rc = load_payload_data(payload, body.data, body.size);
    if ( rc )
    {
        free_payload(payload);
        return rc;
    }
    payload->used = true;
    payload->state = LIVEPATCH_STATE_CHECKED;
    printk("livepatch: %s: loaded\n", name);
    return 0;
}

/* Undo the first `count` functions of an apply, newest first. */
static void revert_funcs(struct payload *data, unsigned int count)
{
    while ( count-- )
        arch_livepatch_revert(&data->funcs[count], data->fstate[count].insn, data->fstate[count].offset);
}

static int apply_payload(struct payload *data)
{
    unsigned int i;
    int rc;

    /* As Xen: the load hooks run first, then the functions are patched. */
    for ( i = 0; i < data->n_load_funcs; i++ )
        data->load_funcs[i]();
    for ( i = 0; i < data->nfuncs; i++ )
    {
        rc = arch_livepatch_apply(&data->funcs[i], data->fstate[i].insn, &data->fstate[i].offset);
        if ( rc )
        {
            revert_funcs(data, i);
            return rc;
        }
    }
    data->state = LIVEPATCH_STATE_APPLIED;
    data->applied_order = ++applied_count;
    printk("livepatch: %s: applied\n", data->name);
    return 0;
}

static int revert_payload(struct payload *data)
{
    unsigned int i;

    revert_funcs(data, data->nfuncs);
    /* As Xen: the unload hooks run once the functions are back. */
    for ( i = 0; i < data->n_unload_funcs; i++ )
        data->unload_funcs[i]();
    data->state = LIVEPATCH_STATE_CHECKED;
    data->applied_order = 0;
    applied_count--;
    printk("livepatch: %s: reverted\n", data->name);
    return 0;
}

/* Xen's REPLACE: revert every applied payload, newest first, then apply this one, in one quiescent point. */
static int replace_payloads(struct payload *data)
{
    struct payload *other;

    while ( (other = top_applied()) )
    {
        other->rc = revert_payload(other);
        if ( other->rc )
            return livepatch_fail(-EINVAL, "%s: replace stopped: reverting %s failed", data->name, other->name);
    }
    return apply_payload(data);
}

/* The quiescent point: serve() calls this between requests, with no handler on the stack. */
void livepatch_quiesce(void)
{
    struct payload *data = pending.data;

    if ( !data )
        return;
    pending.data = NULL;
    error[0] = '\0';
    switch ( pending.cmd )
    {
    case LIVEPATCH_ACTION_APPLY:
        data->rc = apply_payload(data);
        if ( data->apply_hooks.post && *data->apply_hooks.post )
            (*data->apply_hooks.post)(data);
        break;
    case LIVEPATCH_ACTION_REPLACE:
        data->rc = replace_payloads(data);
        break;
    default:
        data->rc = revert_payload(data);
        if ( data->revert_hooks.post && *data->revert_hooks.post )
            (*data->revert_hooks.post)(data);
    }
    snprintf(data->error, sizeof(data->error), "%s", data->rc ? error : "");
}

static bool any_applied_vetoing_hooks(void)
{
    unsigned int i;

    for ( i = 0; i < LIVEPATCH_MAX_PAYLOADS; i++ )
        if ( payloads[i].used && payloads[i].state == LIVEPATCH_STATE_APPLIED && has_vetoing_hooks(&payloads[i]) )
            return true;
    return false;
}

static int livepatch_action(const char *name, unsigned int cmd)
{
    struct payload *data = find_payload(name);

    if ( !data )
        return livepatch_fail(-ENOENT, "%s: no payload of that name is loaded", name);
    if ( pending.data )
        return livepatch_fail(-EBUSY, "%s: an action on %s is in progress", name, pending.data->name);
    switch ( cmd )
    {
    case LIVEPATCH_ACTION_UNLOAD:
        if ( data->state != LIVEPATCH_STATE_CHECKED )
            return livepatch_fail(-EBUSY, "%s: applied: revert it before unloading", name);
        free_payload(data);
        printk("livepatch: %s: unloaded\n", name);
        return 0;
    case LIVEPATCH_ACTION_REVERT:
        if ( data->state != LIVEPATCH_STATE_APPLIED )
            return livepatch_fail(-EINVAL, "%s: not applied, nothing to revert", name);
        if ( data != top_applied() )
            return livepatch_fail(-EBUSY, "%s: can't revert, %s is applied on top of it", name,
                                  top_applied()->name);
        if ( data->revert_hooks.pre && *data->revert_hooks.pre && (data->rc = (*data->revert_hooks.pre)(data)) )
            return livepatch_fail(data->rc, "%s: pre-revert hook failed (rc=%d), aborting", name, data->rc);
        break;
    case LIVEPATCH_ACTION_APPLY:
        if ( data->state != LIVEPATCH_STATE_CHECKED )
            return livepatch_fail(-EINVAL, "%s: already applied", name);
        /* As Xen: against the last applied payload, or the image when none is. */
        if ( build_id_dep(data, data->depends, data->depends_len, false) )
            return -EINVAL;
        /* As Xen: the pre-apply hook runs now, and its failure stops the apply before anything changes. */
        if ( data->apply_hooks.pre && *data->apply_hooks.pre && (data->rc = (*data->apply_hooks.pre)(data)) )
            return livepatch_fail(data->rc, "%s: pre-apply hook failed (rc=%d), aborting", name, data->rc);
        break;
    case LIVEPATCH_ACTION_REPLACE:
        if ( data->state != LIVEPATCH_STATE_CHECKED )
            return livepatch_fail(-EINVAL, "%s: already applied", name);
        /* A replacement goes on the image itself: everything applied is reverted first. */
        if ( build_id_dep(data, data->depends, data->depends_len, true) )
            return -EINVAL;
        if ( has_vetoing_hooks(data) || any_applied_vetoing_hooks() )
            return livepatch_fail(-EOPNOTSUPP, "%s: REPLACE action is not supported on livepatches with "
                                  "vetoing hooks", name);
        break;
    }
    data->rc = -EAGAIN;
    pending.data = data;
    pending.cmd = cmd;
    return 0;
}

static const char *state_name(int state)
{
    return state == LIVEPATCH_STATE_APPLIED ? "APPLIED" : "CHECKED";
}

static size_t emit(char *buf, size_t size, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static size_t emit(char *buf, size_t size, size_t len, const char *fmt, ...)
{
    va_list args;

    if ( len >= size )
        return len;
    va_start(args, fmt);
    len += vsnprintf(buf + len, size - len, fmt, args);
    va_end(args);
    return len < size ? len : size - 1;
}

static size_t livepatch_get(const struct payload *data, char *buf, size_t size, size_t len)
{
    unsigned int i;

    len = emit(buf, size, len, "name : %s\nstate : %s\nrc : %d\nbuild_id : ", data->name,
               state_name(data->state), data->rc);
    for ( i = 0; i < data->build_id_len; i++ )
        len = emit(buf, size, len, "%02x", data->build_id[i]);
    len = emit(buf, size, len, "\ndepends : ");
    for ( i = 0; i < data->depends_len; i++ )
        len = emit(buf, size, len, "%02x", data->depends[i]);
    len = emit(buf, size, len, "\napplied_order : %u", data->applied_order);
    len = emit(buf, size, len, "\nsections : %s\n", data->sections);
    if ( data->error[0] )
        len = emit(buf, size, len, "error : %s\n", data->error);
    for ( i = 0; i < data->nfuncs; i++ )
        len = emit(buf, size, len, "func : %s old=%p new=%p old_size=%u new_size=%u patch_offset=%u\n",
                   data->funcs[i].name, data->funcs[i].old_addr, data->funcs[i].new_addr,
                   data->funcs[i].old_size, data->funcs[i].new_size,
                   arch_livepatch_patch_offset(&data->funcs[i]));
    return len;
}

static size_t livepatch_list(char *buf, size_t size, size_t len)
{
    unsigned int i;

    for ( i = 0; i < LIVEPATCH_MAX_PAYLOADS; i++ )
        if ( payloads[i].used )
            len = emit(buf, size, len, "payload : %s %s %d\n", payloads[i].name, state_name(payloads[i].state),
                       payloads[i].rc);
    return len;
}

static char *last_space(const char *s)
{
    const char *last = NULL;

    for ( ; *s; s++ )
        if ( *s == ' ' )
            last = s;
    return (char *)last;
}

/*
 * "livepatch upload NAME SIZE" carries SIZE bytes after its line. SIZE is the line's last
 * word, whatever the words before it hold, so no name can move it. Returns the size, 0 for
 * a request without a body, and -1 for an upload line whose last word is not a size: what
 * follows such a line cannot be told from requests, so serve() ends the connection.
 */
long livepatch_body_size(const char *line)
{
    const char *p;
    long size = 0;

    if ( memcmp(line, "livepatch upload ", 17) )
        return 0;
    p = last_space(line) + 1;
    if ( !*p )
        return -1;
    for ( ; *p; p++ )
    {
        if ( *p < '0' || *p > '9' || size > (1L << 40) )
            return -1;
        size = size * 10 + (*p - '0');
    }
    return size;
}

void livepatch_take_body(void *data, size_t size)
{
    body.data = data;
    body.size = size;
}

static char *next_word(char **args)
{
    char *word = *args, *space;

    while ( *word == ' ' )
        word++;
    space = strchr(word, ' ');
    if ( space )
        *space++ = '\0';
    *args = space ? space : word + strlen(word);
    return word;
}

static const struct {
    const char *name;
    unsigned int cmd;
} actions[] = {
    { "apply", LIVEPATCH_ACTION_APPLY },
    { "revert", LIVEPATCH_ACTION_REVERT },
    { "unload", LIVEPATCH_ACTION_UNLOAD },
    { "replace", LIVEPATCH_ACTION_REPLACE },
};

static long livepatch_dispatch(char *args, char *buf, size_t size, size_t *len)
{
    char *op = next_word(&args), *name, *size_text = NULL;
    const struct payload *data;
    unsigned int i;

    if ( !strcmp(op, "list") && !*args )
    {
        *len = livepatch_list(buf, size, *len);
        return 0;
    }
    if ( !strcmp(op, "upload") && (size_text = last_space(args)) != NULL )
    {
        /* NAME is all before the size, spaces included: a name with a space is refused whole. */
        *size_text++ = '\0';
        name = args;
    }
    else
        name = next_word(&args);
    if ( !*name )
        return livepatch_fail(-EINVAL, "livepatch %s: which payload?", op);
    if ( !valid_name(name) )
        return livepatch_fail(-EINVAL, "bad payload name '%s' (1-%u of A-Z a-z 0-9 - _ +)", name,
                              LIVEPATCH_NAME_SIZE - 1);
    if ( !strcmp(op, "upload") )
        return livepatch_upload(name, size_text ? size_text : "");
    if ( *args )
        return livepatch_fail(-EINVAL, "livepatch %s: unexpected '%s'", op, args);
    if ( !strcmp(op, "get") )
    {
        data = find_payload(name);
        if ( !data )
            return livepatch_fail(-ENOENT, "%s: no payload of that name is loaded", name);
        *len = livepatch_get(data, buf, size, *len);
        return 0;
    }
    for ( i = 0; i < ARRAY_SIZE(actions); i++ )
        if ( !strcmp(op, actions[i].name) )
            return livepatch_action(name, actions[i].cmd);
    return livepatch_fail(-ENOSYS, "livepatch %s: unknown operation (upload, list, get, apply, revert, "
                          "unload, replace)", op);
}

/* One "livepatch ..." request; the answer lines go into buf. */
long livepatch_request(char *args, char *buf, size_t size, size_t *len)
{
    long rc;

    error[0] = '\0';
    rc = livepatch_dispatch(args, buf, size, len);
    body.data = NULL;
    body.size = 0;
    if ( rc && error[0] )
        *len = emit(buf, size, *len, "error : %s\n", error);
    return rc;
}

const struct bug_frame *livepatch_find_bug_frame(unsigned long addr, unsigned int *type)
{
    unsigned int i, id, n;

    for ( i = 0; i < LIVEPATCH_MAX_PAYLOADS; i++ )
    {
        const struct payload *data = &payloads[i];

        if ( !data->used || !in_region((void *)addr, 1, data->text_addr, data->text_size) )
            continue;
        for ( id = 0; id < BUGFRAME_NR; id++ )
        {
            const uint8_t *frame = (const uint8_t *)data->bugs[id];
            size_t step = id == BUGFRAME_assert ? 16 : 8;

            for ( n = 0; n < data->nbugs[id]; n++, frame += step )
                if ( (unsigned long)bug_loc((const struct bug_frame *)frame) == addr )
                {
                    *type = id;
                    return (const struct bug_frame *)frame;
                }
        }
    }
    return NULL;
}
