"""The payload against Xen's livepatch ABI, read with pyelftools (an independent reader)."""

from __future__ import annotations

import hashlib
import io
import subprocess

from conftest import Checkout
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

from xsplice_build.elf.livepatch import BUILD_ID, DEPENDS, FUNCS, XEN_4_17_FUNC, XEN_DEPENDS
from xsplice_build.elf.notes import image_build_id
from xsplice_build.elf.reader import read_elf_file
from xsplice_build.stages.sign import split


def _payload(built: Checkout, patch: str) -> ELFFile:
    payload, _ = split((built.out(patch) / f"{patch}.livepatch").read_bytes(), patch)
    return ELFFile(io.BytesIO(payload))


def test_livepatch_funcs_match_struct_livepatch_func(built_once: Checkout) -> None:
    elf = _payload(built_once, "XSA-131")
    assert elf.header.e_type == "ET_REL" and elf.header.e_machine == "EM_X86_64"
    funcs = elf.get_section_by_name(FUNCS)
    assert funcs.data_size == XEN_4_17_FUNC.size == 104 and funcs.header.sh_flags & 0x3 == 0x3  # WRITE | ALLOC
    entry = XEN_4_17_FUNC.unpack(funcs.data())
    image = read_elf_file(built_once.work("minixen", "base", "tree", "xen-syms"))
    old = next(s for s in image.symbols if s.name == "do_domctl")
    assert (entry.old_addr, entry.old_size, entry.version) == (old.value, old.size, 2)
    assert entry.new_size == 400
    rela = next(s for s in elf.iter_sections() if isinstance(s, RelocationSection)
                and elf.get_section(s.header.sh_info).name == FUNCS)
    symtab = elf.get_section(rela.header.sh_link)
    targets = {r["r_offset"]: symtab.get_symbol(r["r_info_sym"]) for r in rela.iter_relocations()}
    new_addr, name = targets[XEN_4_17_FUNC.new_addr], targets[XEN_4_17_FUNC.name]
    assert new_addr.name == "do_domctl" and new_addr["st_info"]["type"] == "STT_FUNC"
    strings = elf.get_section(name["st_shndx"]).data()
    assert strings.split(b"\0")[0] == b"do_domctl"


def test_depends_notes_hold_the_base_build_id(built_once: Checkout) -> None:
    elf = _payload(built_once, "XSA-131")
    build_id = image_build_id(read_elf_file(built_once.work("minixen", "base", "tree", "xen-syms")))
    for name in (DEPENDS, XEN_DEPENDS):
        section = elf.get_section_by_name(name)
        assert section.header.sh_flags & 0x2 and section.data()[16:] == build_id
    own = elf.get_section_by_name(BUILD_ID).data()[16:]
    assert len(own) == 20 and own != build_id


def test_the_payloads_own_build_id_is_the_sha1_of_itself(built_once: Checkout) -> None:
    payload, _ = split((built_once.out("XSA-131") / "XSA-131.livepatch").read_bytes(), "p")
    elf = ELFFile(io.BytesIO(payload))
    note = elf.get_section_by_name(BUILD_ID)
    start = note.header.sh_offset + 16
    zeroed = payload[:start] + b"\0" * 20 + payload[start + 20:]
    assert hashlib.sha1(zeroed).digest() == payload[start:start + 20]


def test_only_relocation_types_xens_loader_accepts(built_once: Checkout) -> None:
    for patch in ("XSA-131", "regression-test"):
        elf = _payload(built_once, patch)
        for section in elf.iter_sections():
            if isinstance(section, RelocationSection):
                for rela in section.iter_relocations():
                    assert rela["r_info_type"] in (1, 2, 4), (patch, section.name)


def test_the_unsigned_payload_passes_elflint(built_once: Checkout) -> None:
    unsigned = built_once.work("minixen", "patches", "XSA-131", "XSA-131.livepatch.unsigned")
    subprocess.run(["eu-elflint", "--gnu-ld", str(unsigned)], check=True, capture_output=True)
    dump = subprocess.run(["objdump", "-dr", str(unsigned)], check=True, capture_output=True, text=True).stdout
    assert "domctl.c#domctl_count.0" in dump and "<do_domctl>:" in dump


def test_the_payload_stage_refuses_what_the_loader_refuses_for_its_size_alone() -> None:
    """Xen refuses 1024 sections or more ("Too many (N) sections") and uploads over 2 MiB: the build
    stops with the rule instead of shipping a payload the hypervisor will not load."""
    import pytest

    from xsplice_build.elf.constants import SHT_PROGBITS
    from xsplice_build.elf.livepatch import MAX_PAYLOAD_SIZE, MAX_SECTIONS
    from xsplice_build.elf.writer import OutSection, write_relocatable
    from xsplice_build.errors import XspliceError
    from xsplice_build.stages.payload import check_loader_limits

    def sections(count: int, size: int = 0) -> bytes:
        # The writer adds the null section, .symtab, .strtab and .shstrtab.
        return write_relocatable([OutSection(f".text.f{n}", SHT_PROGBITS, 0x6, bytes(size), 1)
                                  for n in range(count - 4)], [])

    check_loader_limits(sections(MAX_SECTIONS - 1))
    with pytest.raises(XspliceError, match=r"payload: 1024 sections; .*\[rule: section-limit\]"):
        check_loader_limits(sections(MAX_SECTIONS))
    with pytest.raises(XspliceError, match=r"\[rule: size-limit\]"):
        check_loader_limits(sections(5, MAX_PAYLOAD_SIZE))
