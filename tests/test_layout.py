"""Record layouts from the baseline's DWARF, with the profile's figures where DWARF is silent."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from conftest import Checkout

from xsplice_build.diff.profile import XEN_X86_64
from xsplice_build.target.layout import apply_layout, baseline_layout, func_layout, read_structs


def test_bug_frame_sizes_come_from_the_images_dwarf(built_once: Checkout) -> None:
    layout = json.loads(built_once.work("minixen", "base.json").read_text())["layout"]
    frames = layout["special_sections"]
    assert frames[".bug_frames.1"] == {"entry_size": 8, "source": "DWARF struct bug_frame"}
    assert frames[".bug_frames.3"] == {"entry_size": 16, "source": "DWARF struct bug_frame + 8"}


def test_a_different_struct_layout_in_dwarf_wins_over_the_profile(tmp_path: Path) -> None:
    source = tmp_path / "lp.c"
    # A future Xen with a wider livepatch_func and a 12-byte exception table entry.
    source.write_text("struct livepatch_func { const char *name; void *new_addr; void *old_addr;"
                      " unsigned int new_size, old_size; unsigned char version; unsigned char pad[79]; } f;\n"
                      "struct exception_table_entry { int addr, cont, extra; } e;\n")
    image = tmp_path / "lp.o"
    subprocess.run(["gcc", "-g", "-c", str(source), "-o", str(image)], check=True)
    assert read_structs(image, ["livepatch_func"])["livepatch_func"].size == 112
    layout = baseline_layout(image, XEN_X86_64)
    assert layout["special_sections"][".ex_table"]["entry_size"] == 12
    assert apply_layout(XEN_X86_64, layout).special(".ex_table").entry_size == 12
    func = func_layout(layout, 2)
    assert (func.size, func.old_addr, func.version_offset) == (112, 16, 32)


def test_without_dwarf_the_profile_stands(tmp_path: Path) -> None:
    source = tmp_path / "nodebug.c"
    source.write_text("int f(void) { return 1; }\n")
    subprocess.run(["gcc", "-c", str(source), "-o", str(tmp_path / "n.o")], check=True)
    layout = baseline_layout(tmp_path / "n.o", XEN_X86_64)
    assert layout["livepatch_func"]["size"] == 104
    assert layout["special_sections"][".altinstructions"] == {"entry_size": 14, "source": "target profile"}
