"""The bundled baseline runs as a process and behaves like the hypervisor it stands in for."""

from __future__ import annotations

import subprocess
from pathlib import Path

from conftest import Checkout

from xsplice_build.elf.notes import image_build_id
from xsplice_build.elf.reader import read_elf_file


def _ask(image: Path, *requests: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(image)], input="".join(r + "\n" for r in requests), capture_output=True, text=True,
                          timeout=10, check=False)


def _image(built: Checkout) -> Path:
    return built.work("minixen", "base", "tree", "xen-syms")


def test_info_reports_xen_extra_and_the_build_id(built_once: Checkout) -> None:
    result = _ask(_image(built_once), "info")
    assert result.returncode == 0
    assert "xen_extra : -unstable" in result.stdout.splitlines()
    build_id = image_build_id(read_elf_file(_image(built_once))).hex()
    assert f"build_id : {build_id}" in result.stdout.splitlines()


def test_the_unpatched_dispatcher_lets_max_vcpus_through_with_a_warning(built_once: Checkout) -> None:
    result = _ask(_image(built_once), "domctl max_vcpus 0 64", "domctl getinfo 0")
    assert result.stdout.splitlines()[0] == "= 0"
    assert "max_vcpus : 16" in result.stdout
    # WARN_ON's bug frame names the file and line it was recorded at.
    assert "(XEN) Xen WARN at common/domain.c:" in result.stderr


def test_the_image_is_hypervisor_shaped(built_once: Checkout) -> None:
    image = read_elf_file(_image(built_once))
    assert image.section_named(".note.gnu.build-id") is not None
    assert {"__start_bug_frames", "__stop_bug_frames_3"} <= {s.name for s in image.symbols}
    assert image.section_named(".interp") is None  # no dynamic loader: freestanding, fixed address
    domctl = next(s for s in image.symbols if s.name == "do_domctl")
    assert domctl.value >= 0x400000
    assert any(s.xen_name == "domctl.c#domctl_count.0" for s in image.symbols)
