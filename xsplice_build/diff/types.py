"""Type layouts from the compiler's DWARF: every struct, union and enum of a translation unit.

A patch that moves a member of a structure the running hypervisor holds makes every
function touching a later member read the old objects at new offsets. Offsets in the
code cannot say why they moved; the compiler's own debug information can. This module
reads one object's DWARF (pyelftools) into a TypeTable: the layout of each named
aggregate (members with offset, size and type), which aggregates each one reaches
(embedded or through a pointer), and which aggregates each function and variable uses
directly. The struct-layout rule (layouts.py) compares two tables.
"""

from __future__ import annotations

import hashlib
import io
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from elftools.common.exceptions import ELFError as PyElfError
from elftools.dwarf.die import DIE
from elftools.elf.elffile import ELFFile

from ..elf.debug import with_debug_relocations
from ..elf.reader import read_elf
from ..errors import ElfError

_AGGREGATES = {"DW_TAG_structure_type": "struct", "DW_TAG_union_type": "union", "DW_TAG_enumeration_type": "enum"}
_QUALIFIERS = frozenset({"DW_TAG_typedef", "DW_TAG_const_type", "DW_TAG_volatile_type", "DW_TAG_restrict_type",
                         "DW_TAG_atomic_type"})
_REFERENCE_FORMS = frozenset({"DW_FORM_ref1", "DW_FORM_ref2", "DW_FORM_ref4", "DW_FORM_ref8", "DW_FORM_ref_udata"})


@dataclass(frozen=True)
class Member:
    name: str
    offset: int  # bytes from the start of the aggregate
    size: int
    type: str  # the member's type as C spells it
    bits: tuple[int, int] | None = None  # (bit offset in the aggregate, bit size) of a bit-field


@dataclass(frozen=True)
class TypeLayout:
    key: str  # "struct domain", "union u", "enum state", or a typedef's name for an anonymous one
    size: int
    members: tuple[Member, ...] = ()
    enumerators: tuple[tuple[str, int], ...] = ()


@dataclass
class TypeTable:
    """What one translation unit's DWARF says about its aggregates and who uses them."""

    layouts: dict[str, TypeLayout] = field(default_factory=dict)
    reaches: dict[str, set[str]] = field(default_factory=dict)  # aggregate -> aggregates its members lead to
    functions: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # function -> aggregates
    variables: dict[str, set[str]] = field(default_factory=dict)  # variable -> aggregates of its type

    def users_of(self, key: str) -> set[str]:
        """The aggregates from which `key` can be reached (embedded or through pointers), itself included."""
        reverse: dict[str, set[str]] = defaultdict(set)
        for source, targets in self.reaches.items():
            for target in targets:
                reverse[target].add(source)
        seen, stack = {key}, [key]
        while stack:
            for source in reverse.get(stack.pop(), ()):
                if source not in seen:
                    seen.add(source)
                    stack.append(source)
        return seen


def has_dwarf(path: Path) -> bool:
    try:
        with path.open("rb") as stream:
            return ELFFile(stream).get_section_by_name(".debug_info") is not None
    except (PyElfError, OSError, ValueError):
        return False


# Tables already read, by the sha256 of their object: the build's early debug compiles read them while make
# still links, and the diff, run next in the same sandboxed process, finds them here. Only read after that.
_READ: dict[str, TypeTable] = {}
_READ_MAX = 64


def read_types(path: Path) -> TypeTable:
    """The TypeTable of `path`'s DWARF (empty when it has none)."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ValueError(f"{path}: cannot read DWARF: {error}") from None
    digest = hashlib.sha256(data).hexdigest()
    table = _READ.get(digest)
    if table is None:
        table = _read_types(path, data)
        if len(_READ) >= _READ_MAX:
            _READ.pop(next(iter(_READ)))
        _READ[digest] = table
    return table


def _read_types(path: Path, data: bytes) -> TypeTable:
    try:
        elf = ELFFile(io.BytesIO(with_debug_relocations(data, read_elf(data, str(path)))))
        if not elf.has_dwarf_info():
            return TypeTable()
        reader = _Reader()
        for unit in elf.get_dwarf_info(relocate_dwarf_sections=False).iter_CUs():
            reader.read_unit(unit)
        return reader.table
    except (PyElfError, OSError, ValueError, KeyError, ElfError) as error:
        raise ValueError(f"{path}: cannot read DWARF: {error}") from None


class _Reader:
    def __init__(self) -> None:
        self.table = TypeTable()
        self.dies: dict[int, DIE] = {}
        self._described: dict[int, str] = {}
        self._aggregates: dict[int, frozenset[str]] = {}
        self._sizes: dict[int, int] = {}
        self._function_uses: dict[int, set[str]] = {}
        self._typedefs: dict[int, str] = {}

    def read_unit(self, unit: Any) -> None:
        self.dies = {die.offset: die for die in unit.iter_DIEs() if die.tag}
        self._described, self._aggregates, self._sizes, self._function_uses = {}, {}, {}, {}
        self._typedefs = {}
        for die in self.dies.values():
            target = self._ref(die, "DW_AT_type") if die.tag == "DW_TAG_typedef" else None
            if target is not None and target.offset not in self._typedefs:
                self._typedefs[target.offset] = self._name_of(die)
        for die in self.dies.values():
            if die.tag in _AGGREGATES and not die.attributes.get("DW_AT_declaration"):
                self._layout(die)
        top = unit.get_top_DIE()
        for die in top.iter_children():
            if die.tag == "DW_TAG_subprogram":
                name = self._name_of(die)
                if name:
                    self.table.functions[name] |= self._uses(die)
            elif die.tag == "DW_TAG_variable":
                name = self._name_of(die)
                kinds = self._type_aggregates(die)
                if name:
                    self.table.variables[name] = set(self.table.variables.get(name, set())) | set(kinds)

    # --- names and references

    def _ref(self, die: DIE, attribute: str) -> DIE | None:
        value = die.attributes.get(attribute)
        if value is None:
            return None
        offset = value.value + die.cu.cu_offset if value.form in _REFERENCE_FORMS else value.value
        return self.dies.get(offset)

    def _name_of(self, die: DIE) -> str:
        for _ in range(4):
            name = die.attributes.get("DW_AT_name")
            if name is not None:
                return _text(name.value)
            origin = self._ref(die, "DW_AT_abstract_origin") or self._ref(die, "DW_AT_specification")
            if origin is None:
                return ""
            die = origin
        return ""

    def _key(self, die: DIE) -> str | None:
        """The aggregate's name as the tables key it, or None for an anonymous one."""
        name = die.attributes.get("DW_AT_name")
        return f"{_AGGREGATES[die.tag]} {_text(name.value)}" if name is not None else None

    # --- layouts

    def _layout(self, die: DIE) -> None:
        key = self._key(die)
        if key is None:
            key = self._typedef_name(die)
        if key is None or (key in self.table.layouts and self.table.layouts[key].size):
            return
        size = _int(die.attributes.get("DW_AT_byte_size"))
        if die.tag == "DW_TAG_enumeration_type":
            values = tuple((self._name_of(c), _int(c.attributes.get("DW_AT_const_value")))
                           for c in die.iter_children() if c.tag == "DW_TAG_enumerator")
            self.table.layouts[key] = TypeLayout(key, size, enumerators=values)
            self.table.reaches.setdefault(key, set())
            return
        self.table.layouts[key] = TypeLayout(key, size, tuple(self._members(die, 0, "")))
        self.table.reaches[key] = set(self._member_aggregates(die))

    def _typedef_name(self, die: DIE) -> str | None:
        return self._typedefs.get(die.offset)

    def _members(self, die: DIE, base: int, prefix: str) -> list[Member]:
        members = []
        for child in die.iter_children():
            if child.tag != "DW_TAG_member":
                continue
            offset, bits = _member_offset(child)
            kind = self._ref(child, "DW_AT_type")
            name = self._name_of(child)
            if not name and kind is not None and self._strip(kind).tag in _AGGREGATES \
                    and self._key(self._strip(kind)) is None:
                # An anonymous struct or union member: its members are the container's own.
                members.extend(self._members(self._strip(kind), base + offset, prefix))
                continue
            bit_size = _int(child.attributes.get("DW_AT_bit_size")) if "DW_AT_bit_size" in child.attributes else None
            members.append(Member(prefix + name, base + offset, self._size(kind), self._describe(kind),
                                  (bits + 8 * base, bit_size) if bit_size is not None else None))
        return members

    def _member_aggregates(self, die: DIE) -> set[str]:
        reached: set[str] = set()
        for child in die.iter_children():
            if child.tag == "DW_TAG_member":
                reached |= self._type_aggregates(child)
        return reached

    def _strip(self, die: DIE) -> DIE:
        """Through typedefs and qualifiers to the type itself."""
        for _ in range(32):
            if die.tag not in _QUALIFIERS:
                return die
            inner = self._ref(die, "DW_AT_type")
            if inner is None:
                return die
            die = inner
        return die

    def _size(self, die: DIE | None) -> int:
        if die is None:
            return 0
        if die.offset in self._sizes:
            return self._sizes[die.offset]
        self._sizes[die.offset] = 0  # a cycle (never in valid DWARF) sizes as 0
        size = 0
        if "DW_AT_byte_size" in die.attributes:
            size = _int(die.attributes["DW_AT_byte_size"])
        elif die.tag == "DW_TAG_array_type":
            count = 1
            for sub in die.iter_children():
                if sub.tag == "DW_TAG_subrange_type":
                    count *= _subrange_count(sub)
            size = count * self._size(self._ref(die, "DW_AT_type"))
        elif die.tag in _QUALIFIERS:
            size = self._size(self._ref(die, "DW_AT_type"))
        self._sizes[die.offset] = size
        return size

    def _describe(self, die: DIE | None) -> str:
        """The type as C would spell it, anonymous aggregates spelled out by their layout."""
        if die is None:
            return "void"
        if die.offset in self._described:
            return self._described[die.offset]
        self._described[die.offset] = "..."  # cycle guard
        tag = die.tag
        inner = self._ref(die, "DW_AT_type")
        if tag in _AGGREGATES:
            key = self._key(die)
            inside = "; ".join(f"{m.type} {m.name}@{m.offset}" for m in self._members(die, 0, ""))
            text = key or f"{_AGGREGATES[tag]} {{{inside}}}"
        elif tag == "DW_TAG_pointer_type":
            text = self._describe(inner) + " *"
        elif tag == "DW_TAG_array_type":
            counts = "".join(f"[{_subrange_count(s)}]" for s in die.iter_children() if s.tag == "DW_TAG_subrange_type")
            text = self._describe(inner) + counts
        elif tag == "DW_TAG_typedef" or tag == "DW_TAG_base_type":
            text = self._name_of(die)
        elif tag in _QUALIFIERS:
            text = f"{tag[7:-5]} {self._describe(inner)}"
        elif tag == "DW_TAG_subroutine_type":
            text = f"{self._describe(inner)} (*)()"
        else:
            text = self._name_of(die) or tag
        self._described[die.offset] = text
        return text

    def _type_aggregates(self, die: DIE) -> frozenset[str]:
        """The named aggregates a DIE's type leads to: through typedefs, qualifiers, arrays and pointers."""
        kind = self._ref(die, "DW_AT_type")
        return self._aggregates_of(kind) if kind is not None else frozenset()

    def _aggregates_of(self, die: DIE) -> frozenset[str]:
        if die.offset in self._aggregates:
            return self._aggregates[die.offset]
        self._aggregates[die.offset] = frozenset()  # cycle guard
        if die.tag in _AGGREGATES:
            key = self._key(die) or self._typedef_name(die)
            found = frozenset({key}) if key else frozenset(self._member_aggregates(die))
        elif die.tag == "DW_TAG_subroutine_type":
            found = frozenset()
        else:
            inner = self._ref(die, "DW_AT_type")
            found = self._aggregates_of(inner) if inner is not None else frozenset()
        self._aggregates[die.offset] = found
        return found

    # --- uses

    def _uses(self, subprogram: DIE) -> set[str]:
        """The aggregates a function's own declarations use: return type, parameters, locals, inlined callees."""
        if subprogram.offset in self._function_uses:
            return self._function_uses[subprogram.offset]
        self._function_uses[subprogram.offset] = set()
        used: set[str] = set()
        stack = [subprogram]
        while stack:
            die = stack.pop()
            if "DW_AT_type" in die.attributes:
                used |= self._type_aggregates(die)
            origin = self._ref(die, "DW_AT_abstract_origin") or self._ref(die, "DW_AT_specification")
            if origin is not None:
                if origin.tag == "DW_TAG_subprogram":
                    used |= self._uses(origin)
                elif "DW_AT_type" in origin.attributes:
                    used |= self._type_aggregates(origin)
            stack.extend(die.iter_children())
        self._function_uses[subprogram.offset] = used
        return used


def _member_offset(member: DIE) -> tuple[int, int]:
    """(byte offset, bit offset) of a member, for plain members and bit-fields alike."""
    location = member.attributes.get("DW_AT_data_member_location")
    if "DW_AT_data_bit_offset" in member.attributes:
        bits = _int(member.attributes["DW_AT_data_bit_offset"])
        return bits // 8, bits
    offset = location.value if location is not None and isinstance(location.value, int) else 0
    return offset, 8 * offset


def _subrange_count(sub: DIE) -> int:
    if "DW_AT_count" in sub.attributes:
        return _int(sub.attributes["DW_AT_count"])
    if "DW_AT_upper_bound" in sub.attributes:
        return _int(sub.attributes["DW_AT_upper_bound"]) + 1
    return 0  # a flexible array member


def _int(attribute: Any) -> int:
    value = getattr(attribute, "value", 0)
    return value if isinstance(value, int) else 0


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
