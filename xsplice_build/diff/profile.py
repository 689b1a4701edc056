"""Target profiles: what is specific to one hypervisor and architecture, as data.

The passes ask a profile how large the patching jump is, which special sections
hold per-function entries (and how large an entry is), which relocation types the
loader accepts, and which sections are init-only. Adding a target means adding a
profile here, not touching the passes.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..elf import livepatch
from ..elf.constants import R_X86_64_64, R_X86_64_NONE, R_X86_64_PC32, R_X86_64_PLT32


@dataclass(frozen=True)
class SpecialSection:
    """A table whose entries each belong to one function (bug frames, exception fixups).

    `anchor` is the byte offset, within an entry, of the relocation that names the code
    the entry belongs to; an entry travels with its function or not at all.
    """

    name: str
    entry_size: int
    anchor: int = 0
    # Entry fields (by offset) that hold a source line number in the relocation addend.
    line_fields: tuple[int, ...] = ()
    # The C struct one entry is (read from the baseline's DWARF when it has it), plus trailing bytes.
    struct: str | None = None
    extra: int = 0
    # False for a table the target's loader ignores: a patched function with entries there is refused.
    loader_supported: bool = True
    # The bits of those addends that hold the line (the rest is the displacement).
    line_mask: int = 0


@dataclass(frozen=True)
class TargetProfile:
    name: str
    jump_size: int
    endbr_size: int
    endbr_bytes: bytes
    special_sections: tuple[SpecialSection, ...]
    accepted_relocations: frozenset[int]
    init_section_prefixes: tuple[str, ...]
    # Sections never diffed nor carried: debug info, notes and the like.
    ignored_section_prefixes: tuple[str, ...]
    auxiliary_sections: tuple[str, ...] = ()
    readonly_data_prefixes: tuple[str, ...] = ()
    # Calls whose argument registers may carry __LINE__ (a changed line there alone is no change),
    # and the opcodes of `mov $imm32, %reg` that load such an argument (as kpatch's line heuristics).
    line_consumers: frozenset[str] = frozenset()
    line_immediate_opcodes: frozenset[int] = frozenset()
    livepatch_payload_version: int = 2
    # An ENDBR64 Xen turned into a NOP at boot (is_endbr64_poison): the jump still goes after it.
    endbr_poison: bytes = b""
    # Sections the loader looks up by name and takes the first of: the payload carries one of each.
    merged_sections: tuple[str, ...] = ()
    # The `.livepatch.hooks.*` sections the target's loader runs (xen/include/xen/livepatch_payload.h);
    # a baseline whose loader has fewer says so ([target] hooks), and the others are refused.
    hook_sections: tuple[str, ...] = ()
    # Hooks that hold one pointer each (LIVEPATCH_ASSIGN_SINGLE_HOOK); the others are arrays.
    single_hooks: tuple[str, ...] = ()
    # CPU bring-up and resume hooks (fnmatch patterns on plain names): a patched function reached only from
    # these functions, or pointed at only by these tables, takes no effect on CPUs already online.
    bring_up_functions: tuple[str, ...] = ()
    bring_up_tables: tuple[str, ...] = ()

    def jump_room(self, first_bytes: bytes) -> tuple[int, int]:
        """(patch offset, bytes the old function needs) for a function starting with `first_bytes`.

        The one statement of Xen's rule (arch_livepatch_verify_func, arch_livepatch_apply): the
        jump replaces the first bytes, after an ENDBR64 (or its poison), which must stay first.
        """
        starts = first_bytes[:self.endbr_size]
        offset = self.endbr_size if starts in (self.endbr_bytes, self.endbr_poison) and starts else 0
        return offset, offset + self.jump_size

    def special(self, section_name: str) -> SpecialSection | None:
        for special in self.special_sections:
            if special.name == section_name:
                return special
        return None

    def is_ignored_section(self, section_name: str) -> bool:
        return section_name.startswith(self.ignored_section_prefixes)

    def is_init_section(self, section_name: str) -> bool:
        return section_name.startswith(self.init_section_prefixes)

    def is_auxiliary(self, section_name: str) -> bool:
        return section_name in self.auxiliary_sections

    def is_hook(self, section_name: str) -> bool:
        return section_name.startswith(HOOK_PREFIX)

    def is_readonly_data(self, section_name: str) -> bool:
        return section_name.startswith(self.readonly_data_prefixes) if self.readonly_data_prefixes else False


def _bug_frame(number: int) -> SpecialSection:
    # xen/arch/x86/include/asm/bug.h: two 32-bit displacements with the line split into their
    # top bits (8 bytes); an ASSERT frame (type 3) adds two more words for its message (16).
    extra = 8 if number == 3 else 0
    return SpecialSection(f".bug_frames.{number}", 8 + extra, anchor=0, line_fields=(0, 4), struct="bug_frame",
                          extra=extra, line_mask=((1 << 7) - 1) << 24)


HOOK_PREFIX = livepatch.HOOKS_PREFIX
# Load and unload hooks run when the payload is applied and reverted; pre-apply and pre-revert may veto.
# (.livepatch.hooks.apply and .revert replace the loader's own patching: not supported here.)
HOOKS = ("load", "unload", "preapply", "postapply", "prerevert", "postrevert")

XEN_X86_64 = TargetProfile(
    name="xen-x86_64",
    jump_size=5,  # jmp rel32 (arch_livepatch_apply: ARCH_PATCH_INSN_SIZE)
    endbr_size=4,  # with CET-IBT the jump goes after the ENDBR64 (arch_livepatch_verify_func)
    endbr_bytes=bytes.fromhex("f30f1efa"),
    endbr_poison=bytes.fromhex("660f1f01"),  # nopl (%rcx): asm/endbr.h gen_endbr64_poison
    merged_sections=(".altinstr_replacement",),
    special_sections=(
        *(_bug_frame(number) for number in range(4)),
        # struct exception_table_entry { s32 addr, cont; } (asm/uaccess.h)
        SpecialSection(".ex_table", 8, anchor=0, struct="exception_table_entry"),
        # The pre-exception table (asm_defns.h _ASM_EXTABLE(..., .pre)): prepare_payload never reads it.
        SpecialSection(".ex_table.pre", 8, anchor=0, struct="exception_table_entry", loader_supported=False),
        # struct alt_instr { s32 orig_offset, repl_offset; u16 cpuid; u8 orig_len, repl_len, pad_len, priv; }
        # __packed (asm/alternative.h): 14 bytes, anchored on the instruction it may replace.
        SpecialSection(".altinstructions", 14, anchor=0, struct="alt_instr"),
    ),
    # Out-of-line code that belongs to the functions whose entries point at it: carried when a kept
    # entry needs it, never a function to patch in its own right.
    auxiliary_sections=(".fixup", ".altinstr_replacement"),
    # Written once by relocation processing, then only read: constant tables of pointers under -fpic.
    readonly_data_prefixes=(".data.rel.ro",),
    # arch_livepatch_perform_rela in xen/arch/x86/livepatch.c
    accepted_relocations=frozenset({R_X86_64_NONE, R_X86_64_64, R_X86_64_PC32, R_X86_64_PLT32}),
    init_section_prefixes=(".init.", ".initcall"),
    line_consumers=frozenset({"printk", "panic", "printk_once", "__warn", "__bug", "assert_failed",
                              "debugtrap_printk"}),
    # B8+r: mov $imm32 to eax..edi (41 B8+r for r8d..r15d has the same last two bytes).
    line_immediate_opcodes=frozenset(range(0xB8, 0xC0)),
    hook_sections=tuple(f"{HOOK_PREFIX}{hook}" for hook in HOOKS),
    single_hooks=tuple(f"{HOOK_PREFIX}{hook}" for hook in HOOKS[2:]),
    # xen/arch/x86/smpboot.c, cpu/common.c, acpi/power.c: where a CPU is brought up or resumed; the
    # vendor tables (amd_cpu_dev, intel_cpu_dev, ...) whose c_init/c_early_init identify_cpu calls.
    bring_up_functions=("start_secondary", "identify_cpu", "early_cpu_init", "cpu_callback", "cpu_up",
                        "enter_state", "*_resume", "init_secondary*", "cpu_init"),
    bring_up_tables=("*_cpu_dev",),
    ignored_section_prefixes=(".debug_", ".comment", ".note.GNU-stack", ".note.gnu.property", ".eh_frame",
                              ".group", ".discard", ".rela", ".symtab", ".strtab", ".shstrtab",
                              ".llvm_addrsig"),
)

PROFILES = {XEN_X86_64.name: XEN_X86_64}


def profile_named(name: str) -> TargetProfile:
    from ..errors import ConfigError

    if name not in PROFILES:
        raise ConfigError(f"unknown target profile {name!r}; known: {', '.join(sorted(PROFILES))}")
    return PROFILES[name]
