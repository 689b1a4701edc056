"""GNU build-id notes: reading an image's, and making the ones a payload carries."""

from __future__ import annotations

from ..errors import ElfError
from .constants import NT_GNU_BUILD_ID, SHT_NOTE
from .model import ElfFile
from .structs import NHDR


def parse_build_id_note(data: bytes, where: str) -> bytes:
    """The descriptor of the first NT_GNU_BUILD_ID "GNU" note in `data`."""
    offset = 0
    while offset + NHDR.size <= len(data):
        namesz, descsz, kind = NHDR.unpack_from(data, offset)
        name_start = offset + NHDR.size
        desc_start = name_start + _align4(namesz)
        end = desc_start + _align4(descsz)
        if desc_start + descsz > len(data):
            raise ElfError(f"{where}: note at offset {offset:#x} runs past its section")
        if kind == NT_GNU_BUILD_ID and data[name_start:name_start + namesz] == b"GNU\0":
            if descsz == 0:
                raise ElfError(f"{where}: the GNU build-id note is empty")
            return data[desc_start:desc_start + descsz]
        offset = end
    raise ElfError(f"{where}: no GNU build-id note")


def build_id_note(build_id: bytes) -> bytes:
    """An NT_GNU_BUILD_ID note as ld writes it: namesz 4, "GNU\\0", then the id padded to 4."""
    return NHDR.pack(4, len(build_id), NT_GNU_BUILD_ID) + b"GNU\0" + build_id + b"\0" * _pad4(len(build_id))


def image_build_id(image: ElfFile) -> bytes:
    """The build-id of a linked image (xen-syms): from .note.gnu.build-id, else any note section."""
    section = image.section_named(".note.gnu.build-id")
    if section is not None:
        return parse_build_id_note(section.data, f"{image.name}: .note.gnu.build-id")
    for candidate in image.sections:
        if candidate.type == SHT_NOTE:
            try:
                return parse_build_id_note(candidate.data, f"{image.name}: {candidate.name}")
            except ElfError:
                continue
    raise ElfError(f"{image.name}: no GNU build-id note; link the image with --build-id")


def _align4(size: int) -> int:
    return size + _pad4(size)


def _pad4(size: int) -> int:
    return -size % 4
