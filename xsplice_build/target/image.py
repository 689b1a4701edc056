"""The base image (xen-syms): its build-id, its symbols by the names Xen gives them, its bytes."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ..elf.constants import SHT_NOBITS
from ..elf.model import ElfFile, Symbol
from ..elf.notes import image_build_id
from ..elf.reader import read_elf_file
from ..errors import XspliceError


@dataclass
class BaseImage:
    path: Path
    elf: ElfFile
    build_id: bytes
    by_name: dict[str, list[Symbol]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> BaseImage:
        elf = read_elf_file(path)
        index: dict[str, list[Symbol]] = defaultdict(list)
        for symbol in elf.symbols[1:]:
            if symbol.name and not symbol.is_undefined and not symbol.is_file and not symbol.is_section:
                index[symbol.xen_name].append(symbol)
        return cls(path=path, elf=elf, build_id=image_build_id(elf), by_name=dict(index))

    def lookup(self, name: str, wanted_by: str) -> Symbol:
        """The one symbol Xen's symbol table would resolve `name` to; refuse none or several."""
        found = self.by_name.get(name, [])
        if len(found) == 1:
            return found[0]
        if not found:
            raise XspliceError(f"{wanted_by}: symbol {name!r} is not in the base image {self.path.name}; "
                               "the payload could not be loaded (was the baseline built by this pipeline?)")
        where = ", ".join(f"{s.value:#x}" for s in found)
        raise XspliceError(f"{wanted_by}: symbol {name!r} is ambiguous in the base image {self.path.name} "
                           f"({len(found)} definitions at {where}); rename one of the statics")

    def has(self, name: str) -> bool:
        return bool(self.by_name.get(name))

    def read(self, address: int, size: int) -> bytes:
        """`size` bytes of the image at `address`, from the section that holds them."""
        for section in self.elf.sections:
            if section.is_alloc and section.type != SHT_NOBITS and section.addr <= address \
                    and address + size <= section.addr + section.size:
                start = address - section.addr
                return section.data[start:start + size]
        raise XspliceError(f"{self.path.name}: no section holds {size} bytes at {address:#x}")
