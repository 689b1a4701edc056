"""The toolchain lock: this machine's gcc, cc1, as and ld, fingerprinted and compared."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import REPO

from xsplice_build.errors import ConfigError, ToolchainMismatch
from xsplice_build.stages import toolchain


def test_probe_fingerprints_the_four_tools() -> None:
    tools = toolchain.probe()
    assert set(tools) == {"gcc", "cc1", "as", "ld"}
    for tool in tools.values():
        assert Path(tool.path).is_absolute() and len(tool.sha256) == 64 and tool.version


def test_the_repository_lock_matches_this_machine() -> None:
    assert toolchain.check(REPO / "toolchain.lock")["gcc"].version.endswith("12.2.0")


def test_a_mismatch_names_the_tool_and_what_differs(tmp_path: Path) -> None:
    lock = tmp_path / "toolchain.lock"
    tools = toolchain.probe()
    tools["as"] = toolchain.Tool("as", tools["as"].path, "GNU assembler 9.99", tools["as"].sha256)
    toolchain.write_lock(lock, tools)
    with pytest.raises(ToolchainMismatch) as error:
        toolchain.check(lock)
    assert str(error.value).startswith("toolchain.lock: as differs: version is 'GNU assembler")


@pytest.mark.parametrize(("edit", "message"), [
    (lambda t: t.replace("[cc1]", "[cc2]"), "unknown key 'cc2'"),
    (lambda t: t.replace('sha256 = "', 'sha256 = 1 #"', 1), "key 'sha256' must be a string"),
    (lambda t: t.replace("path =", "pth =", 1), "unknown key 'pth'"),
    (lambda t: t + "\n[[", "not valid TOML"),
    (lambda t: t.replace("[ld]", "[ld_unused]"), "unknown key 'ld_unused'"),
    (lambda t: t.split("[ld]")[0], "missing key 'ld' (the locked ld)"),
    (lambda t: t.replace("version =", "# version =", 1), "missing key 'version'"),
    (lambda t: re.sub(r'version = ("[^"]*")', r"version = [\1]", t, count=1), "[gcc] key 'version' must be a string"),
    (lambda t: "gcc = 3\n[cc1]" + t.split("[cc1]", 1)[1], "key 'gcc' must be a table (the locked gcc), not int"),
])
def test_a_malformed_lock_is_refused_naming_file_and_key(tmp_path: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    lock = tmp_path / "toolchain.lock"
    lock.write_text(edit((REPO / "toolchain.lock").read_text()))
    with pytest.raises(ConfigError) as error:
        toolchain.check(lock)
    assert message in str(error.value) and str(lock) in str(error.value)
