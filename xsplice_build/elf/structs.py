"""Every ELF64 little-endian record this project reads or writes, declared once.

Field order follows the System V gABI (Elf64_Ehdr, Elf64_Shdr, Elf64_Sym, Elf64_Rela,
Elf64_Nhdr); nothing outside xsplice_build.elf packs or unpacks these bytes.
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

assert (EHDR.size, SHDR.size, SYM.size, RELA.size, NHDR.size, PHDR.size) == (64, 64, 24, 24, 12, 56)
