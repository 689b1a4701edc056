"""Every ELF64 little-endian record this project reads or writes, declared once.

Field order follows the System V gABI (Elf64_Ehdr, Elf64_Shdr, Elf64_Sym, Elf64_Rela,
Elf64_Nhdr, Elf64_Phdr, Elf64_Dyn); nothing outside xsplice_build.elf packs or unpacks these bytes.
"""

from __future__ import annotations

import struct

# e_ident[16], e_type, e_machine, e_version, e_entry, e_phoff, e_shoff, e_flags,
# e_ehsize, e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx
EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
# sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size, sh_link, sh_info, sh_addralign, sh_entsize
SHDR = struct.Struct("<IIQQQQIIQQ")
# st_name, st_info, st_other, st_shndx, st_value, st_size
SYM = struct.Struct("<IBBHQQ")
# r_offset, r_info, r_addend
RELA = struct.Struct("<QQq")
# n_namesz, n_descsz, n_type
NHDR = struct.Struct("<III")
# p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align
PHDR = struct.Struct("<IIQQQQQQ")
# d_tag, d_val (Elf64_Dyn)
DYN = struct.Struct("<qQ")

assert (EHDR.size, SHDR.size, SYM.size, RELA.size, NHDR.size, PHDR.size, DYN.size) == (64, 64, 24, 24, 12, 56, 16)

# The gABI's field names of each record, in order: tools and tests edit a field by name, never by offset.
FIELDS: dict[struct.Struct, tuple[str, ...]] = {
    EHDR: ("e_ident", "e_type", "e_machine", "e_version", "e_entry", "e_phoff", "e_shoff", "e_flags", "e_ehsize",
           "e_phentsize", "e_phnum", "e_shentsize", "e_shnum", "e_shstrndx"),
    SHDR: ("sh_name", "sh_type", "sh_flags", "sh_addr", "sh_offset", "sh_size", "sh_link", "sh_info",
           "sh_addralign", "sh_entsize"),
    SYM: ("st_name", "st_info", "st_other", "st_shndx", "st_value", "st_size"),
    RELA: ("r_offset", "r_info", "r_addend"),
    NHDR: ("n_namesz", "n_descsz", "n_type"),
    PHDR: ("p_type", "p_flags", "p_offset", "p_vaddr", "p_paddr", "p_filesz", "p_memsz", "p_align"),
    DYN: ("d_tag", "d_val"),
}


def read_field(record: struct.Struct, data: bytes, offset: int, name: str) -> int:
    """One field, by its gABI name, of the `record` at `offset` in `data`."""
    return record.unpack_from(data, offset)[FIELDS[record].index(name)]


def write_field(record: struct.Struct, data: bytearray, offset: int, name: str, value: int) -> None:
    """Replace one field, by its gABI name, of the `record` at `offset` in `data`."""
    fields = list(record.unpack_from(data, offset))
    fields[FIELDS[record].index(name)] = value
    record.pack_into(data, offset, *fields)
