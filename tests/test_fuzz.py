"""The fuzzer's short budget (benchmarks/fuzz.py): every reader of hostile input, seeded with the real
objects and payloads of a minixen build, for 300 inputs each; no crash, no hang, no traceback."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

from conftest import REPO, Checkout

from xsplice_build.errors import XspliceError

TARGETS = ("elf", "verify", "split", "sign", "diff", "toml", "protocol", "loader")


RUNS = 300  # a fixed amount of work, not of time: the figures do not depend on the machine's load


def test_a_short_fuzzing_run_finds_no_crash_or_hang(built_once: Checkout, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "fuzz.py"), "--runs", str(RUNS),
                             "--root", str(built_once.root), "--work", str(tmp_path)],
                            capture_output=True, text=True, check=False, timeout=300)
    logs = {target: (tmp_path / f"{target}.log").read_text() for target in TARGETS}
    assert result.returncode == 0, result.stdout + result.stderr + "".join(logs.values())
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[1:1 + len(TARGETS)]}
    assert sorted(rows) == sorted(TARGETS)
    for target, (executions, _rate, coverage, _features, crashes, hangs) in rows.items():
        assert int(executions) >= RUNS and int(coverage) > 10, (target, logs[target])
        assert (crashes, hangs) == ("0", "0"), logs[target]
        assert "Uncaught Python exception" not in logs[target]
    assert not [path for path in (tmp_path / "artifacts").rglob("*") if path.is_file()]


FOUND = REPO / "tests" / "fuzz_found"


def _harness():  # type: ignore[no-untyped-def]
    specification = importlib.util.spec_from_file_location("fuzz_harness", REPO / "benchmarks" / "fuzz.py")
    assert specification and specification.loader
    module = importlib.util.module_from_spec(specification)
    sys.modules[specification.name] = module  # its dataclasses look their module up there
    specification.loader.exec_module(module)
    return module


def test_every_input_the_fuzzer_found_is_now_refused_cleanly(built_once: Checkout) -> None:
    harness = _harness()
    found = sorted(path for path in FOUND.iterdir() if path.name != "README")
    assert found
    for path in found:
        one_input = harness.TARGET_SETUP[path.name.split("-", 1)[0]](built_once.root)
        try:
            one_input(path.read_bytes())
        except XspliceError as error:
            assert error.message.isprintable(), path
