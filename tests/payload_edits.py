"""The loader parity table: bad payloads made from a good one, and what each judge says of them.

Each Case takes a good unsigned payload and the image it was built for (`Good`) and returns a
payload that breaks one rule of Xen 4.17's loader (xen/common/livepatch.c, livepatch_elf.c,
xen/arch/x86/livepatch.c, alternative.c). Its verdicts say what `xsplice-build verify`, minixen's
loader and Xen's own loader answer. Where Xen 4.17 trusts the payload and would write into data
or crash, verify and minixen refuse on purpose: `why` says so, and docs/loader.md lists the checks.

A judge is a function Good -> payload -> Verdict check; tests run CASES through verify and
minixen, and a VM-tier judge runs the same table through the real hypervisor (`xen` verdicts).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from xsplice_build.elf.constants import (
    ET_EXEC,
    R_X86_64_32,
    R_X86_64_PC32,
    SHF_ALLOC,
    SHF_EXECINSTR,
    SHF_WRITE,
    SHT_NOBITS,
    SHT_PROGBITS,
    SHT_RELA,
    STB_LOCAL,
    STT_OBJECT,
)
from xsplice_build.elf.livepatch import (
    ALT_INSTR,
    ALT_INSTRUCTIONS,
    ALT_REPLACEMENT,
    BUG_FRAMES,
    DEPENDS,
    EX_TABLE,
    FUNCS,
    MAX_PAYLOAD_SIZE,
    MAX_SECTIONS,
    MODINFO,
    STRINGS,
    XEN_4_17_FUNC,
    XEN_DEPENDS,
)
from xsplice_build.elf.model import Symbol
from xsplice_build.elf.reader import read_elf
from xsplice_build.elf.relink import to_output
from xsplice_build.elf.structs import EHDR, NHDR, RELA, SHDR, SYM, read_field, write_field
from xsplice_build.elf.writer import OutRela, OutSection, OutSymbol, section_symbol, write_relocatable
from xsplice_build.stages import sign
from xsplice_build.target.image import BaseImage


@dataclass(frozen=True)
class Good:
    """A payload every judge accepts, and the image it was built for."""

    payload: bytes  # unsigned
    image: BaseImage


@dataclass(frozen=True)
class Verdict:
    outcome: str  # "accepted", "refused", or "crash" (the loader accepts it and then faults)
    says: str = ""  # words of the refusal ("" when the judge refuses without a message)


def accepted() -> Verdict:
    return Verdict("accepted")


def refused(says: str = "") -> Verdict:
    return Verdict("refused", says)


def crash(where: str) -> Verdict:
    """Accepted, then the hypervisor faults (seen on Debian's Xen 4.17: FATAL PAGE FAULT or BUG in `where`)."""
    return Verdict("crash", where)


# ---- edits at the byte level ---------------------------------------------------------------------

# Every record is edited through its one declaration (elf.structs, elf.livepatch): nothing here retypes a layout.

def _section_header_offset(data: bytes, index: int) -> int:
    return read_field(EHDR, data, 0, "e_shoff") + index * SHDR.size


def _edit_section_header(data: bytes, index: int, field: str, change: Callable[[int], int]) -> bytes:
    out = bytearray(data)
    at = _section_header_offset(data, index)
    write_field(SHDR, out, at, field, change(read_field(SHDR, data, at, field)))
    return bytes(out)


def _set_flags(data: bytes, name: str, set_bits: int = 0, clear_bits: int = 0) -> bytes:
    section = read_elf(data, "payload").section_named(name)
    assert section is not None, name
    return _edit_section_header(data, section.index, "sh_flags", lambda flags: (flags | set_bits) & ~clear_bits)


def other_build_id(data: bytes) -> bytes:
    """Depend on an image that is not the one running (flip every byte of both build-ids)."""
    out = bytearray(data)
    elf = read_elf(data, "payload")
    for name in (DEPENDS, XEN_DEPENDS):
        section = elf.section_named(name)
        # The note's descriptor follows its header and its 4-byte aligned name ("GNU\0").
        descriptor = section.offset + NHDR.size + (read_field(NHDR, data, section.offset, "n_namesz") + 3) // 4 * 4
        for offset in range(descriptor, section.offset + section.size):
            out[offset] ^= 0xFF
    return bytes(out)


def writable_text(data: bytes) -> bytes:
    text = next(s for s in read_elf(data, "payload").sections if s.is_text)
    return _set_flags(data, text.name, set_bits=SHF_WRITE)


def unknown_symbol(data: bytes) -> bytes:
    """Rename the first undefined symbol (same length) so the image has no such name."""
    out = bytearray(data)
    elf = read_elf(data, "payload")
    symbol = next(s for s in elf.symbols[1:] if s.is_undefined)
    symtab = elf.sections[elf.symtab_index]
    strtab = elf.sections[symtab.link]
    st_name = read_field(SYM, data, symtab.offset + symbol.index * symtab.entsize, "st_name")
    out[strtab.offset + st_name] = ord("Q")
    return bytes(out)


def _first_text_relocation(data: bytes) -> tuple[int, int]:
    """(file offset of the first relocation against text, its r_info)."""
    elf = read_elf(data, "payload")
    target = next(s for s in elf.sections if s.is_text and s.relocations)
    rela = elf.sections[target.rela_section]
    return rela.offset, read_field(RELA, data, rela.offset, "r_info")


def unsupported_relocation(data: bytes) -> bytes:
    out = bytearray(data)
    offset, info = _first_text_relocation(data)
    write_field(RELA, out, offset, "r_info", (info >> 32 << 32) | R_X86_64_32)  # ELF64_R_INFO(sym, type)
    return bytes(out)


def overflowing_relocation(data: bytes) -> bytes:
    out = bytearray(data)
    offset, _ = _first_text_relocation(data)
    write_field(RELA, out, offset, "r_addend", 1 << 40)
    return bytes(out)


def _funcs_entry(data: bytes, **fields: int) -> bytes:
    """Rewrite fields of the first .livepatch.funcs entry, through the ABI's own definition."""
    section = read_elf(data, "payload").section_named(FUNCS)
    return XEN_4_17_FUNC.replace(data, section.offset, **fields)


def wrong_old_size(data: bytes) -> bytes:
    section = read_elf(data, "payload").section_named(FUNCS)
    return _funcs_entry(data, old_size=XEN_4_17_FUNC.unpack(data, section.offset).old_size + 1)


def wrong_version(data: bytes) -> bytes:
    return _funcs_entry(data, version=1)


def unallocated_depends(data: bytes) -> bytes:
    return _set_flags(data, DEPENDS, clear_bits=SHF_ALLOC)


def relocations_for_section_zero(data: bytes) -> bytes:
    rela = next(s for s in read_elf(data, "payload").sections if s.type == SHT_RELA)
    return _edit_section_header(data, rela.index, "sh_info", lambda _info: 0)


def not_relocatable(data: bytes) -> bytes:
    out = bytearray(data)
    write_field(EHDR, out, 0, "e_type", ET_EXEC)
    return bytes(out)


def special_section_twice(data: bytes) -> bytes:
    """Name .livepatch.xen_depends .livepatch.depends: the loader looks special sections up by name."""
    elf = read_elf(data, "payload")
    shstrndx = read_field(EHDR, data, 0, "e_shstrndx")
    name = elf.sections[shstrndx].data.index(DEPENDS.encode() + b"\0")
    return _edit_section_header(data, elf.section_named(XEN_DEPENDS).index, "sh_name", lambda _: name)


def read_only_funcs(data: bytes) -> bytes:
    """Xen 4.17 keeps per-function state apart from the entries: they need not be writable."""
    return _set_flags(data, FUNCS, clear_bits=SHF_WRITE)


def writable_names(data: bytes) -> bytes:
    return _set_flags(data, STRINGS, set_bits=SHF_WRITE)


def over_size(data: bytes) -> bytes:
    """Zeroes after the ELF: still a valid payload, one byte more than the loader takes."""
    return data + b"\0" * (MAX_PAYLOAD_SIZE + 1 - len(data))


# ---- edits through the ELF writer (sections, symbols and relocations added) -------------------------

Change = Callable[[list[OutSection], list[OutSymbol]], None]


def _rewrite(data: bytes, change: Change) -> bytes:
    sections, symbols = to_output(read_elf(data, "payload"))
    change(sections, symbols)
    return write_relocatable(sections, symbols)


def _text(sections: list[OutSection]) -> OutSection:
    return next(s for s in sections if s.flags & SHF_EXECINSTR)


def _anchor(symbols: list[OutSymbol], section: OutSection) -> OutSymbol:
    symbol = section_symbol(section)
    symbols.append(symbol)
    return symbol


def unallocated_bug_frames(data: bytes) -> bytes:
    """A .bug_frames.1 entry for the new code, in a section that is not loaded (not SHF_ALLOC)."""
    def change(sections: list[OutSection], symbols: list[OutSymbol]) -> None:
        text = _text(sections)
        frames = OutSection(BUG_FRAMES[1], SHT_PROGBITS, 0, bytes(8), 4)
        frames.relocations = [OutRela(0, R_X86_64_PC32, _anchor(symbols, text), 0),
                              OutRela(4, R_X86_64_PC32, _anchor(symbols, text), 0)]
        sections.append(frames)
    return _rewrite(data, change)


def partial_entry(name: str) -> Callable[[bytes], bytes]:
    """An allocated table of `name` holding half an entry (4 bytes of an 8-byte record), placed first:
    the loader checks the first section of a name (verify checks every one)."""
    def edit(data: bytes) -> bytes:
        def change(sections: list[OutSection], symbols: list[OutSymbol]) -> None:
            sections.insert(0, OutSection(name, SHT_PROGBITS, SHF_ALLOC, bytes(4), 4))
        return _rewrite(data, change)
    return edit


def nobits_over_size(data: bytes) -> bytes:
    def change(sections: list[OutSection], symbols: list[OutSymbol]) -> None:
        sections.append(OutSection(".bss.huge", SHT_NOBITS, SHF_ALLOC | SHF_WRITE, b"", 8,
                                   size=MAX_PAYLOAD_SIZE + 4096))
    return _rewrite(data, change)


def too_many_sections(data: bytes) -> bytes:
    def change(sections: list[OutSection], symbols: list[OutSymbol]) -> None:
        sections.extend(OutSection(f".comment.{n}", SHT_PROGBITS, 0, b"", 1) for n in range(MAX_SECTIONS))
    return _rewrite(data, change)


def unterminated_modinfo(data: bytes) -> bytes:
    def change(sections: list[OutSection], symbols: list[OutSymbol]) -> None:
        sections.append(OutSection(MODINFO, SHT_PROGBITS, SHF_ALLOC, b"PATCH=bad", 1))
    return _rewrite(data, change)


@dataclass(frozen=True)
class Alternative:
    """One struct alt_instr entry, and where its replacement lies."""

    orig_len: int = 0
    repl_len: int = 0
    pad_len: int = 0
    replacements: tuple[bytes, ...] = (b"",)  # .altinstr_replacement sections, in order
    repl_in: int = 0  # which of them the entry points into (-1: into text, no such section carried)
    orig_in_text: bool = True


def alternatives(spec: Alternative) -> Callable[[bytes], bytes]:
    """One alt_instr entry and its replacement sections, ahead of any the payload has."""
    def edit(data: bytes) -> bytes:
        def change(sections: list[OutSection], symbols: list[OutSymbol]) -> None:
            text = _text(sections)
            carried = [OutSection(ALT_REPLACEMENT, SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, r, 1)
                       for r in spec.replacements]
            entry = OutSection(ALT_INSTRUCTIONS, SHT_PROGBITS, SHF_ALLOC,
                               ALT_INSTR.pack(0, 0, 0, spec.orig_len, spec.repl_len, spec.pad_len, 0), 1)
            orig = text if spec.orig_in_text else next(s for s in sections if s.name == STRINGS)
            repl = carried[spec.repl_in] if spec.repl_in >= 0 else text
            entry.relocations = [OutRela(0, R_X86_64_PC32, _anchor(symbols, orig), 0),
                                 OutRela(4, R_X86_64_PC32, _anchor(symbols, repl), 0)]
            # First: the loader takes the first section of each name (a good payload may have its own).
            sections[0:0] = [entry, *carried]
            if not spec.replacements:  # none at all: rename the payload's own out of the loader's sight
                for section in sections:
                    if section.name == ALT_REPLACEMENT:
                        section.name = ALT_REPLACEMENT + ".hidden"
        return _rewrite(data, change)
    return edit


def duplicate_symbol(good: Good) -> bytes:
    """A named object of the payload that shares its name with a function of the image."""
    used = {s.name for s in read_elf(good.payload, "payload").symbols}
    name = next(s.xen_name for s in good.image.elf.symbols
                if s.is_function and not s.is_local and s.name not in used
                and len(good.image.by_name.get(s.name, [])) == 1)

    def change(sections: list[OutSection], symbols: list[OutSymbol]) -> None:
        rodata = next(s for s in sections if s.name == STRINGS)
        symbols.append(OutSymbol(name, STT_OBJECT, STB_LOCAL, rodata, 0, 1))
    return _rewrite(good.payload, change)


# ---- .livepatch.funcs entries naming the image's variables --------------------------------------------

def _image_object(image: BaseImage, preferred: str, kind: str) -> Symbol:
    """`preferred` when the image has it; else the first symbol of that kind large enough for the jump,
    so the table applies to any image. Kinds name the image's output sections (xen-syms flags its
    .text and .rodata writable: the protections are set at run time): data, rodata, bss, or init
    (a function of .init.text, freed after boot)."""
    found = image.by_name.get(preferred, [])
    if len(found) == 1:
        return found[0]
    home = {"data": ".data", "rodata": ".rodata", "bss": ".bss", "init": ".init.text"}[kind]
    for symbol in image.elf.symbols:
        section = image.elf.symbol_section(symbol)
        if section is None or section.name != home or symbol.size < 16 or not (symbol.is_object or kind == "init") \
                or len(image.by_name.get(symbol.xen_name, [])) != 1:
            continue
        if kind != "init" or symbol.is_function:
            return symbol
    raise AssertionError(f"{image.path}: no {kind} symbol to aim at")


def funcs_naming(preferred: str, kind: str) -> Callable[[Good], bytes]:
    """The first entry names a variable of the image, with that variable's address and size."""
    def edit(good: Good) -> bytes:
        target = _image_object(good.image, preferred, kind)
        funcs = read_elf(good.payload, "payload").section_named(FUNCS)
        name_at = next(number for number, r in enumerate(funcs.relocations) if r.offset == XEN_4_17_FUNC.name)

        def change(sections: list[OutSection], symbols: list[OutSymbol]) -> None:
            names = next(s for s in sections if s.name == STRINGS)
            entries = next(s for s in sections if s.name == FUNCS)
            entries.relocations[name_at].addend = len(names.data)
            names.data = bytes(names.data) + target.xen_name.encode() + b"\0"
            entries.data = XEN_4_17_FUNC.replace(entries.data, 0, old_addr=target.value, old_size=target.size)
        return _rewrite(good.payload, change)
    return edit


# ---- the table ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[Good], bytes]
    rule: str  # the loader's check, cited
    verify: Verdict
    minixen: Verdict
    xen: Verdict  # Xen 4.17's own loader
    why: str = ""  # why the judges differ, when they do
    # Whether the real hypervisor may also apply it: not when the jump would go into its variables.
    xen_applies: bool = True


def _bytes(edit: Callable[[bytes], bytes]) -> Callable[[Good], bytes]:
    return lambda good: edit(good.payload)


_XEN_TRUSTS = "Xen 4.17 does not check this; verify and minixen refuse"

CASES = [
    Case("other-build-id", _bytes(other_build_id), "livepatch.c xen_build_id_dep",
         refused("built for another image"), refused("build-id failed"),
         refused("check against hypervisor build-id failed")),
    Case("writable-text", _bytes(writable_text), "livepatch.c move_payload (W+X section)",
         refused("writable and executable"), refused("writable and executable"), refused()),
    Case("unknown-symbol", _bytes(unknown_symbol), "livepatch_elf.c livepatch_elf_resolve_symbols",
         refused("is not in the base image"), refused("unknown symbol"), refused("Unknown symbol")),
    Case("unsupported-relocation", _bytes(unsupported_relocation), "x86 livepatch.c arch_livepatch_perform_rela",
         refused("not a relocation Xen's x86 loader accepts"), refused("unhandled relocation type 10"),
         refused("Unhandled relocation")),
    Case("overflowing-relocation", _bytes(overflowing_relocation), "x86 arch_livepatch_perform_rela (rel32)",
         refused("overflows"), refused("overflow in relocation"), refused("Overflow in relocation")),
    Case("wrong-old-size", _bytes(wrong_old_size), "(ours) old_size is the image's symbol size",
         refused("do not match the image"), refused("do not match the running image"), accepted(),
         why=_XEN_TRUSTS + ": Xen takes old_size as given"),
    Case("wrong-version", _bytes(wrong_version), "livepatch.c prepare_payload (version)",
         refused("version 1, the loader expects 2"), refused("wrong version (1)"), refused("Wrong version")),
    Case("not-relocatable", _bytes(not_relocatable), "livepatch_elf.c livepatch_header_check (ET_REL)",
         refused("is not ET_REL"), refused("invalid ELF payload"), refused("Invalid ELF payload")),
    Case("unallocated-depends", _bytes(unallocated_depends), "prepare_payload reads the note at its load address",
         refused("must be allocated"), refused("must be allocated"), crash("xen_build_id_check"),
         why=_XEN_TRUSTS + ": an unloaded section has load address NULL"),
    Case("relocations-for-section-0", _bytes(relocations_for_section_zero),
         "livepatch_elf_perform_relocs (sh_info)", refused("sh_info 0 names no section"),
         refused("sh_info 0 names no section"), crash("livepatch_elf_perform_relocs"),
         why=_XEN_TRUSTS + ": section 0 has no header in Xen's table"),
    Case("special-section-twice", _bytes(special_section_twice), "livepatch.c check_special_sections",
         refused(".livepatch.depends: was seen 2 times"), refused("was seen more than once"),
         refused(".livepatch.xen_depends is missing")),
    Case("read-only-funcs", _bytes(read_only_funcs), "livepatch.c move_payload (funcs land in the ro region)",
         accepted(), accepted(), accepted()),
    Case("unallocated-bug-frames", _bytes(unallocated_bug_frames), "prepare_payload takes .bug_frames.N as loaded",
         refused("must be allocated"), refused("must be allocated"), accepted(),
         why=_XEN_TRUSTS + ": the table is taken at NULL; the first WARN in the new code faults"),
    Case("bug-frames-partial", _bytes(partial_entry(BUG_FRAMES[0])), "prepare_payload section_ok (.bug_frames.N)",
         refused("is not a multiple of its 8-byte entries"), refused("wrong size 4 of .bug_frames.0"),
         refused("Wrong size 4 of .bug_frames.0")),
    Case("ex-table-partial", _bytes(partial_entry(EX_TABLE)), "prepare_payload section_ok (.ex_table)",
         refused("is not a multiple of its 8-byte entries"), refused("wrong size 4 of .ex_table"),
         refused("Wrong size 4 of .ex_table")),
    Case("funcs-names-data", funcs_naming("kernel.c#domctl_names", "data"), "(ours) old function is code",
         refused("is not a function in the image's text"), refused("is not a function in the image's text"),
         accepted(), why=_XEN_TRUSTS + ": apply writes the jump into the variable", xen_applies=False),
    Case("funcs-names-rodata", funcs_naming("vsprintf.c#digits.0", "rodata"), "(ours) old function is code",
         refused("is not a function in the image's text"), refused("is not a function in the image's text"),
         accepted(), why=_XEN_TRUSTS + ": apply writes the jump into read-only data", xen_applies=False),
    Case("funcs-names-bss", funcs_naming("livepatch.c#payloads", "bss"), "(ours) old function is code",
         refused("is not a function in the image's text"), refused("is not a function in the image's text"),
         accepted(), why=_XEN_TRUSTS + ": apply writes the jump into .bss (minixen: the loader's own table)",
         xen_applies=False),
    Case("funcs-names-init-code", funcs_naming("setup_dom0", "init"), "(ours) old function is live code",
         refused("is init code"), refused("is init code"),
         crash("arch_livepatch_verify_func"),
         why=_XEN_TRUSTS + ": Xen reads the old function's first bytes, freed after boot"),
    Case("writable-names", _bytes(writable_names), "(ours) names are read-only payload data",
         refused("read-only data"), refused("not a string inside the payload"), accepted(),
         why=_XEN_TRUSTS + ": Xen reads the name only to resolve old_addr 0"),
    Case("payload-over-size", _bytes(over_size), "livepatch.c verify_payload (LIVEPATCH_MAX_SIZE)",
         refused("LIVEPATCH_MAX_SIZE"), refused("at most"), refused()),
    Case("nobits-over-size", _bytes(nobits_over_size), "livepatch_elf.c elf_resolve_sections (NOBITS size)",
         refused("bytes of NOBITS"), refused("is too large"), refused()),
    Case("too-many-sections", _bytes(too_many_sections), "livepatch_elf.c livepatch_header_check (e_shnum)",
         refused("Xen's loader takes fewer than 1024"), refused("too many"), refused("Too many")),
    Case("unterminated-modinfo", _bytes(unterminated_modinfo), "livepatch.c prepare_payload (.modinfo)",
         refused("NUL-terminated"), refused("incorrect metadata format"), refused("Incorrect metadata format")),
    Case("duplicate-new-symbol", duplicate_symbol, "livepatch.c build_symbol_table",
         refused("duplicate new symbol"), refused("duplicate new symbol"), refused("duplicate new symbol")),
    Case("alt-zero-length", _bytes(alternatives(Alternative())), "prepare_payload (alternatives, zero length)",
         accepted(), accepted(), accepted()),
    Case("alt-in-second-replacement", _bytes(alternatives(Alternative(
        orig_len=5, repl_len=4, replacements=(b"\x90" * 4, b"\x90" * 4), repl_in=1))),
         "prepare_payload: repl inside the first .altinstr_replacement",
         refused("outside .altinstr_replacement"), refused("outside .altinstr_replacement"),
         refused("outside .altinstr_replacement")),
    Case("alt-without-replacement", _bytes(alternatives(Alternative(replacements=(), repl_in=-1))),
         "prepare_payload: .altinstructions needs .altinstr_replacement",
         refused("no .altinstr_replacement"), refused("no .altinstr_replacement"),
         refused("no .altinstr_replacement")),
    Case("alt-orig-outside-text", _bytes(alternatives(Alternative(orig_in_text=False))),
         "prepare_payload: orig inside the payload text",
         refused("outside the payload text"), refused("outside payload text"), refused("outside payload text")),
    Case("alt-replacement-too-long", _bytes(alternatives(Alternative(
        orig_len=0, repl_len=4, replacements=(b"\x90" * 4,)))), "alternative.c _apply_alternatives BUG_ON",
         refused("would BUG()"), refused("would BUG()"), crash("_apply_alternatives"),
         why=_XEN_TRUSTS + ": the hypervisor BUG()s applying it at upload"),
]


class Machine(Protocol):
    """What a judge needs of a running hypervisor (xen_vm.XenVM): upload, unload, and the whole round."""

    def upload(self, name: str, payload: bytes) -> Any: ...
    def unload(self, name: str) -> Any: ...
    def try_payload(self, name: str, payload: bytes) -> Any: ...


def judge_on(machine: Machine, case: Case, good: Good) -> tuple[str, str]:
    """The real hypervisor's verdict on a case, as ("accepted" | "refused", its reason). The loader's
    checks run at upload; an accepted payload is also applied, reverted and unloaded unless the jump
    would go into the hypervisor's variables (then it is unloaded at once). A case whose Xen verdict is
    "crash" brings the hypervisor down: run it last, or alone."""
    payload = case.make(good)
    if case.xen_applies:
        verdict = machine.try_payload("parity", payload)
    else:
        verdict = machine.upload("parity", payload)
        if verdict.ok:
            machine.unload("parity")
    return ("accepted" if verdict.ok else "refused"), verdict.reason


def resign(unsigned: bytes, keys_dir: Path) -> bytes:
    """Sign with the checkout's development key, so only the edit itself can be at fault."""
    key, certificate, _ = sign.load_keys(sign.SigningKeys(keys_dir / "signing_key.pem",
                                                          keys_dir / "signing_cert.pem", development=True))
    return sign.sign(unsigned, key, certificate)


def unsigned_payload(path: Path) -> bytes:
    return sign.split(path.read_bytes(), path.name)[0]
