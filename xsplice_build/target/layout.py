"""Record layouts read from the base image's own DWARF, so each Xen version gets its own.

The sizes of bug frames, exception-table entries and alternatives, and the layout of
struct livepatch_func, are whatever the baseline's headers say. When the image carries
debug info (Xen needs CONFIG_DEBUG_INFO=y), they are read from it with pyelftools;
otherwise the target profile's values (taken from Xen 4.17's headers) stand, and the
record says which source each figure came from.
"""

from __future__ import annotations

import shlex
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from elftools.common.exceptions import ELFError as PyElfError
from elftools.dwarf.die import DIE
from elftools.elf.elffile import ELFFile

from ..diff.profile import TargetProfile
from ..elf.livepatch import XEN_4_17_FUNC, FuncLayout
from ..errors import BuildError, ElfError
from .baseline import LayoutProbe

# Where each record is declared, to look there first: scanning every unit of a real hypervisor's
# DWARF costs far more than the few units that use the type.
_HOME_UNITS = {
    "bug_frame": ("traps.c", "bug.c"),
    "exception_table_entry": ("extable.c",),
    "alt_instr": ("alternative.c",),
    "livepatch_func": ("livepatch.c",),
}
_FUNC_MEMBERS = ("name", "new_addr", "old_addr", "new_size", "old_size", "version")


@dataclass(frozen=True)
class StructLayout:
    name: str
    size: int
    members: dict[str, int]


def read_structs(image: Path, names: Iterable[str]) -> dict[str, StructLayout]:
    """The layouts of the named structs found in `image`'s DWARF (missing ones are left out)."""
    wanted = set(names)
    found: dict[str, StructLayout] = {}
    try:
        with image.open("rb") as stream:
            elf = ELFFile(stream)
            if not elf.has_dwarf_info():
                return found
            units = list(elf.get_dwarf_info().iter_CUs())
            for home_first in (True, False):
                for unit in units:
                    if not wanted - set(found):
                        return found
                    top = unit.get_top_DIE()
                    unit_name = _text(top.attributes.get("DW_AT_name"))
                    homes = {n for n in wanted - set(found) if unit_name.endswith(_HOME_UNITS.get(n, ()))}
                    if home_first and not homes:
                        continue
                    _scan(top, (homes if home_first else wanted) - set(found), found)
    except (PyElfError, OSError, ValueError) as error:
        raise ElfError(f"{image}: cannot read DWARF: {error}") from None
    return found


def wanted_structs(profile: TargetProfile) -> set[str]:
    return {*(s.struct for s in profile.special_sections if s.struct), "livepatch_func"}


def probe_structs(tree: Path, probe: LayoutProbe, compiler: str, names: set[str]) -> dict[str, StructLayout]:
    """Compile a probe of the tree's headers with the flags the tree compiled `probe.command_file`'s object with.

    Used when the shipped image has no DWARF (Xen without CONFIG_DEBUG_INFO): the records'
    layouts still come from the baseline's own headers, through its own compiler flags.
    """
    command = kbuild_command(tree / probe.command_file)
    flags = compile_flags(shlex.split(command)[1:])
    with tempfile.TemporaryDirectory(prefix="xsplice-probe-") as scratch:
        source, output = Path(scratch) / "probe.c", Path(scratch) / "probe.o"
        lines = [f"#include <{header}>" for header in probe.includes]
        lines += [f"struct {name} *xsplice_probe_{name};" for name in sorted(names)]
        source.write_text("\n".join(lines) + "\n")
        result = subprocess.run([compiler, *flags, "-g", "-c", str(source), "-o", str(output)],
                                cwd=tree / probe.directory, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            first = (result.stderr.strip().splitlines() or ["no output"])[0]
            raise BuildError(f"{probe.command_file}: the layout probe does not compile with the tree's flags: {first}")
        return read_structs(output, names)


def kbuild_command(path: Path) -> str:
    try:
        for line in path.read_text().splitlines():
            if line.startswith("cmd_") and ":=" in line:
                return line.split(":=", 1)[1].strip()
    except OSError as error:
        raise BuildError(f"{path}: cannot read the compile command for the layout probe: {error}") from None
    raise BuildError(f"{path}: no cmd_ line (is it a kbuild .cmd file?)")


_TAKES_VALUE = frozenset({"-include", "-imacros", "-I", "-isystem", "-iquote", "-idirafter", "-x", "-D", "-U",
                          "-MF", "-MQ", "-MT", "-o"})
_DROPPED_WITH_VALUE = frozenset({"-MF", "-MQ", "-MT", "-o"})


def compile_flags(arguments: list[str]) -> list[str]:
    """The compile flags alone: no source, no object, no dependency files written into the tree."""
    kept: list[str] = []
    previous = ""
    for argument in arguments:
        if previous in _DROPPED_WITH_VALUE:
            previous = ""
            continue
        if argument in _DROPPED_WITH_VALUE or argument in ("-c", "-MMD", "-MD", "-MP"):
            previous = argument
            continue
        if previous not in _TAKES_VALUE and not argument.startswith("-") and argument.endswith((".c", ".S", ".s")):
            previous = argument
            continue
        kept.append(argument)
        previous = argument
    return kept


def baseline_layout(image: Path, profile: TargetProfile,
                    probed: dict[str, StructLayout] | None = None) -> dict[str, Any]:
    """The figures the diff and payload stages need, each with where it came from."""
    structs = probed if probed is not None else read_structs(image, wanted_structs(profile))
    origin = "DWARF of the headers (probe)" if probed is not None else "DWARF"
    entries: dict[str, dict[str, Any]] = {}
    for special in profile.special_sections:
        struct = structs.get(special.struct) if special.struct else None
        if struct is not None:
            entries[special.name] = {"entry_size": struct.size + special.extra,
                                     "source": f"{origin} struct {struct.name}"
                                     + (f" + {special.extra}" if special.extra else "")}
        else:
            entries[special.name] = {"entry_size": special.entry_size, "source": "target profile"}
    func = structs.get("livepatch_func")
    if func is not None and all(member in func.members for member in _FUNC_MEMBERS):
        layout = {"size": func.size, **{member: func.members[member] for member in _FUNC_MEMBERS},
                  "source": f"{origin} struct livepatch_func"}
    else:
        layout = {**_func_fields(XEN_4_17_FUNC), "source": "target profile (Xen 4.17 public/sysctl.h)"}
    return {"special_sections": entries, "livepatch_func": layout}


def apply_layout(profile: TargetProfile, layout: dict[str, Any]) -> TargetProfile:
    sizes = {name: entry["entry_size"] for name, entry in layout.get("special_sections", {}).items()}
    specials = tuple(replace(s, entry_size=sizes.get(s.name, s.entry_size)) for s in profile.special_sections)
    return replace(profile, special_sections=specials)


def func_layout(layout: dict[str, Any], version: int) -> FuncLayout:
    fields = layout.get("livepatch_func")
    if not fields:
        return XEN_4_17_FUNC
    return FuncLayout(size=fields["size"], version=version, name=fields["name"], new_addr=fields["new_addr"],
                      old_addr=fields["old_addr"], new_size=fields["new_size"], old_size=fields["old_size"],
                      version_offset=fields["version"])


def _func_fields(layout: FuncLayout) -> dict[str, int]:
    return {"size": layout.size, "name": layout.name, "new_addr": layout.new_addr, "old_addr": layout.old_addr,
            "new_size": layout.new_size, "old_size": layout.old_size, "version": layout.version_offset}


def _scan(top: DIE, wanted: set[str], found: dict[str, StructLayout]) -> None:
    for die in top.iter_children():
        if die.tag != "DW_TAG_structure_type" or "DW_AT_byte_size" not in die.attributes:
            continue
        name = _text(die.attributes.get("DW_AT_name"))
        if name in wanted and name not in found:
            found[name] = StructLayout(name, die.attributes["DW_AT_byte_size"].value, _members(die))


def _members(die: DIE) -> dict[str, int]:
    members = {}
    for member in die.iter_children():
        if member.tag != "DW_TAG_member":
            continue
        location = member.attributes.get("DW_AT_data_member_location")
        bits = member.attributes.get("DW_AT_data_bit_offset")
        offset = location.value if location is not None else (bits.value // 8 if bits is not None else None)
        if isinstance(offset, int):
            members[_text(member.attributes.get("DW_AT_name"))] = offset
    return members


def _text(attribute: Any) -> str:
    if attribute is None:
        return ""
    value = attribute.value
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
