"""A no-op `doit build-patch` is answered from its stamp without doit, and any change goes the normal way.

Every run here is `python -X importtime .venv/bin/doit build-patch XSA-131`: the interpreter lists
each module it imports on stderr, so a run that imported no `doit` module was answered from the
stamp (xsplice_build/noop.py) and one that imported doit went the normal way.
"""

from __future__ import annotations

import os
import pty
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import BIN, REPO, Checkout

PATCH = "patches/XSA-131/minixen.patch"
UNSIGNED = "work/minixen/patches/XSA-131/XSA-131.livepatch.unsigned"
NO_OP_LINE = "xsplice: up-to-date sign:minixen/XSA-131"


@dataclass
class Run:
    code: int
    stdout: str
    modules: set[str]

    @property
    def from_stamp(self) -> bool:
        assert "xsplice_build.commands.launcher" in self.modules  # the project's `doit` ran
        return not any(name == "doit" or name.startswith("doit.") for name in self.modules)

    @property
    def started(self) -> list[str]:
        return re.findall(r"^xsplice: start (\S+)", self.stdout, re.MULTILINE)


def _environment(checkout: Checkout, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, "XSPLICE_ROOT": str(checkout.root), **(extra or {})}


def _command() -> list[str]:
    return [sys.executable, "-X", "importtime", str(BIN / "doit"), "build-patch", "XSA-131"]


def _modules(importtime: str) -> set[str]:
    return {line.rsplit("|", 1)[1].strip() for line in importtime.splitlines() if line.startswith("import time:")}


def build_patch(checkout: Checkout, env: dict[str, str] | None = None) -> Run:
    result = subprocess.run(_command(), cwd=checkout.root, env=_environment(checkout, env), capture_output=True,
                            text=True, timeout=600, check=False)
    return Run(result.returncode, result.stdout, _modules(result.stderr))


def stamps(checkout: Checkout) -> list[Path]:
    return sorted(checkout.work(".noop").glob("*.json"))


def stamped(checkout: Checkout, env: dict[str, str] | None = None) -> Run:
    """Two no-ops: the first (the normal way) leaves the stamp, the second is answered from it."""
    first = build_patch(checkout, env)
    assert first.code == 0 and first.started == [], first.stdout
    second = build_patch(checkout, env)
    assert second.code == 0 and second.from_stamp, (first.stdout, second.stdout)
    assert second.stdout == first.stdout  # the same lines, byte for byte
    return second


def test_a_replayed_no_op_loads_no_install_hook_and_no_pathlib(built: Checkout) -> None:
    """What a replay costs beyond the interpreter: setup installs the package as a path, not as setuptools'
    import hook that site would load at every start, and noop.py keeps its paths as strings."""
    loaded = stamped(built).modules
    assert not [name for name in loaded if name.startswith("__editable__")], "reinstall with ./setup"
    assert "pathlib" not in loaded


def test_a_second_no_op_is_answered_from_the_stamp_with_the_same_lines(built: Checkout) -> None:
    answered = stamped(built)
    assert NO_OP_LINE in answered.stdout.splitlines()
    assert answered.stdout.endswith("depends on build-id " + built.report("XSA-131")["depends_build_id"] + ")\n")
    assert len(stamps(built)) == 1
    assert build_patch(built).from_stamp  # and again


def _touch(path: Path) -> None:
    status = path.stat()
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns + 1_000_000_000))


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[0x40] ^= 0xFF
    path.write_bytes(bytes(data))


def _note_in_patch(path: Path) -> None:
    path.write_text("A note above the diff (git apply reads from the first diff header).\n\n" + path.read_text())


def _forget_sign(checkout: Checkout) -> None:
    checkout.doit("forget", "sign:minixen/XSA-131")


# (what changes, how, the stages the next run must start: [] when doit finds it unchanged after all)
CHANGES: list[tuple[str, Callable[[Checkout], None], list[str]]] = [
    ("touched unsigned payload", lambda c: _touch(c.root / UNSIGNED), []),
    ("tampered unsigned payload", lambda c: _flip(c.root / UNSIGNED), ["payload:minixen/XSA-131"]),
    ("tampered original object", lambda c: _flip(c.work("minixen", "orig", "tree", "common", "domctl.o")),
     ["build-orig:minixen"]),
    ("touched patch", lambda c: _touch(c.root / PATCH), []),
    ("edited patch", lambda c: _note_in_patch(c.root / PATCH), ["build-patched:minixen/XSA-131"]),
    ("touched baseline definition", lambda c: _touch(c.root / "baseline" / "minixen.toml"), []),
    ("touched certificate", lambda c: _touch(c.root / "keys" / "development" / "signing_cert.pem"), []),
    ("touched doit database", lambda c: _touch(c.work(".doit.db")), []),
    ("forgotten sign task", _forget_sign, ["sign:minixen/XSA-131"]),
    ("touched pristine source", lambda c: _touch(c.work("minixen", "src", "common", "domctl.c")), []),
    ("edited pristine source", lambda c: (c.work("minixen", "src", "common", "domctl.c")).write_text("/* */\n"),
     ["checkout:minixen"]),
    ("touched toolchain lock", lambda c: _touch(c.root / "toolchain.lock"), []),
    # A file appearing where the run looked and found none: doit reads its configuration from doit.cfg too.
    ("new doit.cfg", lambda c: (c.root / "doit.cfg").write_text("[GLOBAL]\n"), []),
]


@pytest.mark.parametrize(("change", "harm", "expected"), CHANGES, ids=[change[0] for change in CHANGES])
def test_any_change_the_checks_read_goes_the_normal_way(built: Checkout, change: str,
                                                        harm: Callable[[Checkout], None],
                                                        expected: list[str]) -> None:
    before = stamped(built)
    harm(built)
    after = build_patch(built)
    assert not after.from_stamp
    assert [stage for stage in expected if stage not in after.started] == [], after.stdout
    if after.started:
        assert stamps(built) == []  # a run that executed stages is no verdict on the next: that one decides
    if after.code == 0 and not after.started and expected == []:
        # doit's own verdict: still a no-op (doit orders independent tasks as a set iterates: lines compared as such)
        assert sorted(after.stdout.splitlines()) == sorted(before.stdout.splitlines())


def test_a_new_baseline_file_that_breaks_planning_is_not_hidden_by_the_stamp(built: Checkout) -> None:
    stamped(built)
    (built.root / "baseline" / "other.toml").write_text("not = [valid")
    result = build_patch(built)
    assert not result.from_stamp
    assert result.code != 0  # the normal way reads every baseline definition and refuses this one
    assert stamps(built) == []


def test_a_private_key_made_readable_prints_its_warning_again(built: Checkout) -> None:
    stamped(built)
    (built.root / "keys" / "development" / "signing_key.pem").chmod(0o640)
    result = build_patch(built)
    assert not result.from_stamp
    assert "private key is readable by group or others" in result.stdout


def test_another_environment_goes_the_normal_way(built: Checkout) -> None:
    stamped(built)
    other = build_patch(built, {"XSPLICE_LOCK_TIMEOUT": "99"})
    assert not other.from_stamp and other.code == 0 and other.started == []
    # Each environment has its verdict; the stamp of the last one run is kept.
    assert build_patch(built, {"XSPLICE_LOCK_TIMEOUT": "99"}).from_stamp
    assert not build_patch(built).from_stamp


def test_the_package_code_is_part_of_the_stamp(built: Checkout, tmp_path: Path) -> None:
    # The package imported from a copy (PYTHONPATH comes before the editable install), so its code can change.
    copy = tmp_path / "site" / "xsplice_build"
    shutil.copytree(REPO / "xsplice_build", copy, ignore=shutil.ignore_patterns("__pycache__"))
    env = {"PYTHONPATH": str(copy.parent)}
    stamped(built, env)
    module = copy / "stages" / "payload.py"
    _touch(module)
    touched = build_patch(built, env)
    assert not touched.from_stamp and touched.started == [], touched.stdout
    # That run rewrote what it read (the stages' code identities, kept by the sources' stat): no verdict kept.
    assert stamps(built) == []
    stamped(built, env)
    module.write_text(module.read_text() + "\n# a change of the payload stage's code\n")
    changed = build_patch(built, env)
    assert not changed.from_stamp
    assert "payload:minixen/XSA-131" in changed.started


def test_a_failing_run_leaves_no_stamp(built: Checkout) -> None:
    stamped(built)
    patch = built.root / PATCH
    good = patch.read_text()
    patch.write_text(good.replace(" case XEN_DOMCTL_max_vcpus:", " case XEN_DOMCTL_no_such_case:"))  # no longer applies
    failed = build_patch(built)
    assert failed.code != 0 and not failed.from_stamp
    assert stamps(built) == []
    again = build_patch(built)
    assert again.code != 0 and not again.from_stamp  # still refused: no stamp hides it
    patch.write_text(good)
    assert "build-patched:minixen/XSA-131" in build_patch(built).started


def test_a_build_holding_the_checkout_lock_sends_the_no_op_the_normal_way(built: Checkout) -> None:
    stamped(built)
    holder = subprocess.Popen([str(BIN / "python"), "-c", "import sys\n"
                               "from pathlib import Path\nfrom xsplice_build.lock import hold\n"
                               "from xsplice_build.project import Project\n"
                               f"hold(Project(Path({str(built.root)!r})))\nprint('held', flush=True)\n"
                               "sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    waiting = subprocess.Popen(_command(), cwd=built.root, env={**_environment(built), "PYTHONUNBUFFERED": "1"},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert waiting.stdout is not None
    first = waiting.stdout.readline()  # the normal way waits for the lock, saying so
    holder.communicate("", timeout=30)
    rest, importtime = waiting.communicate(timeout=600)
    assert waiting.returncode == 0
    assert first.startswith("xsplice: waiting for another build in this checkout"), first
    assert NO_OP_LINE in rest
    assert "doit" in _modules(importtime)
    # The waiting run's lines are not a no-op's: it left no stamp; the next run leaves one again.
    assert stamps(built) == []
    assert not build_patch(built).from_stamp
    assert build_patch(built).from_stamp


def test_a_terminal_gets_the_no_op_lines_a_terminal_got(built: Checkout) -> None:
    def in_terminal() -> tuple[str, set[str]]:
        main, terminal = pty.openpty()
        result = subprocess.run(_command(), cwd=built.root, env=_environment(built), stdout=terminal,
                                stderr=subprocess.PIPE, text=True, timeout=600, check=False)
        os.close(terminal)
        output = b""
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the terminal's other end is closed: all read
                break
            if not chunk:
                break
            output += chunk
        os.close(main)
        assert result.returncode == 0
        return output.decode(), _modules(result.stderr)

    plain = stamped(built)  # a pipe's stamp is not a terminal's
    first, first_modules = in_terminal()
    second, second_modules = in_terminal()
    assert "doit" in first_modules and "doit" not in second_modules
    assert second == first
    assert sorted(first.replace("\r\n", "\n").splitlines()) == sorted(plain.stdout.splitlines())


def test_a_closed_stdout_is_refused_as_without_a_stamp(built: Checkout) -> None:
    stamped(built)
    result = subprocess.run(f"exec >&- ; exec {BIN / 'doit'} build-patch XSA-131", shell=True, cwd=built.root,
                            stderr=subprocess.PIPE, text=True, check=False, timeout=600, env=_environment(built))
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["xsplice: error: standard output closed; redirect to a file or /dev/null "
                                          "instead of closing"]


def test_a_reader_that_goes_away_gets_what_it_gets_without_a_stamp(built: Checkout) -> None:
    def reader_gone() -> tuple[int, str]:
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            result = subprocess.run([str(BIN / "doit"), "build-patch", "XSA-131"], cwd=built.root,
                                    env=_environment(built), stdout=write_end, stderr=subprocess.PIPE, text=True,
                                    check=False, timeout=600)
        finally:
            os.close(write_end)
        return result.returncode, result.stderr

    stamped(built)
    with_stamp = reader_gone()  # the stamp's lines cannot be written: the normal way says what it always says
    assert stamps(built) == []
    assert with_stamp == reader_gone()
    assert with_stamp[0] != 0 and "broken pipe" in with_stamp[1]


@pytest.mark.parametrize("arguments", [["list"], ["help"], ["help", "build-patch"], ["clean", "-n"],
                                       ["info", "sign:minixen/XSA-131"], ["no-such-command"]])
def test_every_other_command_is_doit_itself(built: Checkout, arguments: list[str]) -> None:
    env = _environment(built, {"PYTHONHASHSEED": "0"})  # `doit info` lists a task's file_dep as a set iterates
    ours = subprocess.run([str(BIN / "doit"), *arguments], cwd=built.root, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    entry = f"import sys\nsys.argv[0] = {str(BIN / 'doit')!r}\nfrom doit.__main__ import main\nmain()"
    doit = subprocess.run([sys.executable, "-c", entry, *arguments], cwd=built.root, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert (ours.returncode, ours.stdout, ours.stderr) == (doit.returncode, doit.stdout, doit.stderr)
