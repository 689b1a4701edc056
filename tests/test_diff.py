"""The function diff on real objects that gcc compiled for the bundled baseline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Checkout

from xsplice_build.diff.engine import diff_objects, diff_patch
from xsplice_build.diff.profile import XEN_X86_64
from xsplice_build.diff.state import Status
from xsplice_build.elf.reader import read_elf_file
from xsplice_build.errors import NothingToPatch


def _orig(built: Checkout, name: str) -> Path:
    return built.work("minixen", "orig", "tree", name)


def _patched(built: Checkout, patch: str, name: str) -> Path:
    return built.work("minixen", "patches", patch, "objects", f"{name}.XSPLICE")


def test_xsa_131_changes_exactly_the_dispatcher(built_once: Checkout) -> None:
    diff = diff_objects(_orig(built_once, "common/domctl.o"), _patched(built_once, "XSA-131", "common/domctl.o"),
                        "common/domctl.o", XEN_X86_64)
    assert [s.label for s in diff.changed_functions()] == ["do_domctl"]
    assert diff.new_functions() == [] and diff.refusals == []
    included = {s.name for s in diff.states.values() if s.included}
    # The jump table travels with the function whose labels it holds.
    assert included == {".text.do_domctl", ".rodata.do_domctl"}


def test_the_static_local_is_referenced_in_the_base_image_not_copied(built_once: Checkout) -> None:
    diff = diff_objects(_orig(built_once, "common/domctl.o"), _patched(built_once, "XSA-131", "common/domctl.o"),
                        "common/domctl.o", XEN_X86_64)
    result = diff_patch([("common/domctl.o", _orig(built_once, "common/domctl.o"),
                          _patched(built_once, "XSA-131", "common/domctl.o"))], XEN_X86_64)
    assert "domctl.c#domctl_count.0" in result.objects[0].base_references
    assert not any(s.name.startswith(".bss") and s.included for s in diff.states.values())


def test_a_changed_string_literal_travels_in_the_payload(built_once: Checkout) -> None:
    diff = diff_objects(_orig(built_once, "common/version.o"),
                        _patched(built_once, "regression-test", "common/version.o"), "common/version.o", XEN_X86_64)
    [function] = diff.changed_functions()
    assert function.label == "xen_extra_version"
    assert function.reasons == ["relocation at +0x7 now refers to string '-Hello_World' (was string '-unstable')"]
    strings = [s for s in diff.states.values() if s.included and ".str" in s.name]
    assert len(strings) == 1 and b"-Hello_World\0" in strings[0].section.data


def test_identity_every_object_against_itself_finds_no_change(built_once: Checkout) -> None:
    objects = json.loads(built_once.work("minixen", "orig.json").read_text())["objects"]
    assert len(objects) >= 10
    for name in objects:
        path = _orig(built_once, name)
        diff = diff_objects(path, path, name, XEN_X86_64)
        assert [s.name for s in diff.states.values() if s.status is not Status.SAME] == [], name
        with pytest.raises(NothingToPatch):
            diff_patch([(name, path, path)], XEN_X86_64)


def test_the_diff_command_gives_the_pipelines_decision(built_once: Checkout) -> None:
    result = built_once.xsplice("diff", str(_orig(built_once, "common/domctl.o")),
                                str(_patched(built_once, "XSA-131", "common/domctl.o")), "--explain")
    assert result.returncode == 0, result.stderr
    assert "changed do_domctl (384 -> 400 bytes)" in result.stdout
    assert "included    .rodata.do_domctl: read-only data used by do_domctl" in result.stdout
    same = built_once.xsplice("diff", str(_orig(built_once, "common/domctl.o")),
                              str(_orig(built_once, "common/domctl.o")))
    assert same.returncode == 3 and "nothing to patch" in same.stderr


def _compile(directory: Path, name: str, source: str, *flags: str) -> Path:
    import subprocess

    (directory / f"{name}.c").write_text(source)
    output = directory / f"{name}.o"
    subprocess.run(["gcc", "-O2", "-ffunction-sections", "-fdata-sections", "-fcf-protection=branch", *flags, "-c",
                    str(directory / f"{name}.c"), "-o", str(output)], check=True)
    return output


def test_a_relocation_the_loader_does_not_apply_is_refused(tmp_path: Path) -> None:
    # Built without -fpic, for the kernel code model: absolute 32-bit references (R_X86_64_32S).
    source = "extern long counters[];\nlong *bump(long x) {{ return &counters[x * {}]; }}\n"
    flags = ("-fno-pic", "-mcmodel=kernel")
    original = _compile(tmp_path, "orig", source.format(3), *flags)
    patched = _compile(tmp_path, "patched", source.format(5), *flags)
    diff = diff_objects(original, patched, "bump.o", XEN_X86_64)
    assert len(diff.refusals) == 1
    assert diff.refusals[0].startswith("bump.o: bump+0x")
    assert "R_X86_64_32S is not accepted by the xen-x86_64 loader [rule: relocation-type]" in diff.refusals[0]


def test_every_cited_rule_is_in_the_catalogue() -> None:
    import re

    from xsplice_build.diff import compare, layouts, rules
    from xsplice_build.stages import payload
    from xsplice_build.target import bringup

    text = "".join(Path(module.__file__).read_text() for module in (compare, rules, layouts, payload, bringup))
    assert set(re.findall(r"\[rule: ([a-z-]+)\]", text)) <= set(rules.RULES)
    for rule in rules.RULES:  # each is cited somewhere besides the catalogue
        assert text.count(f'"{rule}"') + text.count(f"[rule: {rule}]") >= 2, rule


def test_static_locals_of_one_name_are_told_apart_by_their_functions(tmp_path: Path) -> None:
    # Two statics named `calls`: gcc numbers them per file (calls.0, calls.1), and a static table added
    # further down shifts both numbers. The changed function must keep the base image's own variable.
    base = ("long first(void) {{ static long calls; return ++calls; }}\n"
            "long second(void) {{ static long calls; return calls += {}; }}\n{}")
    later = "long third(int i) { static const int table[] = { 3, 1, 4, 1, 5, 9, 2, 6 }; return table[i & 7]; }\n"
    flags = ("-fpic", "-fno-asynchronous-unwind-tables")
    original = _compile(tmp_path, "t", base.format(2, ""), *flags)
    patched = _compile(tmp_path, "t2", base.format(3, later), *flags).rename(tmp_path / "t.o.patched")
    diff = diff_objects(original, patched, "t.o", XEN_X86_64)
    calls = {s.twin_symbol.name: s.symbol.name for s in diff.states.values() if s.key.startswith(".bss.calls")}
    assert calls == {"calls.0": "calls.1", "calls.1": "calls.2"}  # numbers shifted, pairs by user
    result = diff_patch([("t.o", original, patched)], XEN_X86_64)
    [changed] = result.objects[0].changed_functions()
    assert changed.label == "second"
    elf = read_elf_file(original)
    text = next(s for s in elf.sections if s.name == ".text.second")
    own = {elf.sections[elf.symbols[r.symbol].shndx].name.removeprefix(".bss.") for r in text.relocations}
    assert [name for name in result.objects[0].base_references if "#calls." in name] == \
        [f"t.c#{name}" for name in own if name.startswith("calls.")]


# Xen's ALTERNATIVE layout (asm/alternative.h): a struct alt_instr in .altinstructions, the
# replacement bytes in .altinstr_replacement (none at all for a zero-length replacement).
_ALTERNATIVE = r'''
#define ALT(orig, repl) asm volatile("661:\n\t" orig "\n662:\n\t"                               \
    ".pushsection .altinstructions, \"a\", @progbits\n\t"                                     \
    ".long 661b - .\n\t.long 663f - .\n\t.word 5\n\t"                                        \
    ".byte 662b - 661b\n\t.byte 664f - 663f\n\t.byte 0\n\t.byte 0\n\t.popsection\n\t"       \
    ".pushsection .altinstr_replacement, \"ax\", @progbits\n663:\n\t" repl "\n664:\n\t.popsection")
'''


def test_alternatives_of_several_objects_travel_in_one_replacement_section(tmp_path: Path) -> None:
    """Xen checks each replacement against the first .altinstr_replacement only: one is carried,
    each object's part at its own offset, the entries' references moved with it."""
    from xsplice_build.elf.livepatch import ALT_INSTR, ALT_INSTRUCTIONS, ALT_REPLACEMENT
    from xsplice_build.elf.reader import read_elf

    sources = {
        # An unchanged function's replacement comes first in the section: a part no kept entry uses.
        "a": _ALTERNATIVE + 'int a_same(int x) {{ ALT("nop; nop; nop; nop", "ud2; ud2"); return x * 3; }}\n'
                            'int a_fix(int x) {{ ALT("nop; nop; nop", "lfence"); return x + {}; }}\n',
        "b": _ALTERNATIVE + 'int b_fix(int x) {{ ALT("nop; nop", ""); return x - {}; }}\n',  # zero-length
    }
    pairs = []
    for name, source in sources.items():
        (tmp_path / "orig").mkdir(exist_ok=True)
        (tmp_path / "patched").mkdir(exist_ok=True)
        pairs.append((f"{name}.o", _compile(tmp_path / "orig", name, source.format(1)),
                      _compile(tmp_path / "patched", name, source.format(2))))
    result = diff_patch(pairs, XEN_X86_64)
    assert sorted(f.name for f in result.functions) == ["a_fix", "b_fix"]
    extract = read_elf(result.extract, "extract")
    [replacement] = extract.sections_named(ALT_REPLACEMENT)
    [table] = extract.sections_named(ALT_INSTRUCTIONS)
    assert replacement.data == bytes.fromhex("0f0b0f0b") + bytes.fromhex("0faee8")  # a's part whole; b's is empty
    assert table.size == 2 * ALT_INSTR.size  # a_same's entry stays behind
    targets = {}
    for rela in table.relocations:
        if rela.offset % ALT_INSTR.size == 4:  # repl_offset: section symbol + where the bytes start
            assert extract.symbols[rela.symbol].shndx == replacement.index
            targets[rela.offset // ALT_INSTR.size] = rela.addend  # S + A - P, read at P
    lengths = [ALT_INSTR.unpack_from(table.data, n * ALT_INSTR.size)[4] for n in range(2)]
    spans = sorted((targets[n], lengths[n]) for n in range(2))
    assert spans == [(4, 3), (7, 0)]  # a_fix's lfence after a_same's bytes; b_fix's empty one at the end
    assert all(start + length <= replacement.size for start, length in spans)


LAYOUT_SOURCE = """
enum state { IDLE, RUNNING%s };
struct flags { unsigned int ready:1, %sdirty:1; };
struct item { int id; %sstruct flags f; enum state s; };
int item_ready(struct item *i) { return i->f.dirty + i->s; }
"""


def _layout_pair(tmp_path: Path, patched: tuple[str, str, str]) -> tuple[Path, Path]:
    for side in ("a", "b"):
        (tmp_path / side).mkdir()
    original = _compile(tmp_path / "a", "t", LAYOUT_SOURCE % ("", "", ""), "-g")
    return original, _compile(tmp_path / "b", "t", LAYOUT_SOURCE % patched, "-g")


def test_a_moved_bit_field_is_a_layout_change_an_appended_enumerator_is_not(tmp_path: Path) -> None:
    original, patched = _layout_pair(tmp_path, (", BLOCKED", "busy:1, ", ""))
    diff = diff_objects(original, patched, "t.o", XEN_X86_64)
    by_key = {t.key: t for t in diff.types or []}
    assert by_key["enum state"].status == "compatible"
    assert by_key["struct flags"].status == "changed"
    assert "member dirty moved bit 1 -> bit 2" in by_key["struct flags"].differences
    assert by_key["struct flags"].users == ("item_ready",)
    assert any("struct flags: layout changed" in r and "[rule: struct-layout]" in r for r in diff.refusals)


def test_an_inserted_member_names_its_offsets_and_the_struct_it_moves(tmp_path: Path) -> None:
    original, patched = _layout_pair(tmp_path, ("", "", "long stamp; "))
    diff = diff_objects(original, patched, "t.o", XEN_X86_64)
    assert diff.refusals[0].startswith("t.o: struct item: layout changed (size 0xc -> 0x18; member stamp added at "
                                       "+0x8 (size 0x8, long int); member f moved +0x4 -> +0x10;")
    assert "1 changed or new function(s) depend on it (item_ready) [rule: struct-layout]" in diff.refusals[0]


def test_objects_without_debug_information_compare_no_types(tmp_path: Path) -> None:
    for side in ("a", "b"):
        (tmp_path / side).mkdir()
    original = _compile(tmp_path / "a", "t", LAYOUT_SOURCE % ("", "", ""))
    patched = _compile(tmp_path / "b", "t", LAYOUT_SOURCE % ("", "", "long stamp; "))
    diff = diff_objects(original, patched, "t.o", XEN_X86_64)
    assert diff.types is None and diff.changed_functions()
