"""The fuzzer's short budget (benchmarks/fuzz.py): every reader of hostile input, seeded with the real
objects and payloads of a minixen build, for two seconds each; no crash, no hang, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import REPO, Checkout

TARGETS = ("elf", "verify", "split", "sign", "diff", "toml")


def test_a_short_fuzzing_run_finds_no_crash_or_hang(built_once: Checkout, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "fuzz.py"), "--seconds", "2",
                             "--root", str(built_once.root), "--work", str(tmp_path)],
                            capture_output=True, text=True, check=False, timeout=300)
    logs = {target: (tmp_path / f"{target}.log").read_text() for target in TARGETS}
    assert result.returncode == 0, result.stdout + result.stderr + "".join(logs.values())
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[1:1 + len(TARGETS)]}
    assert sorted(rows) == sorted(TARGETS)
    for target, (executions, _rate, coverage, _features, crashes, hangs) in rows.items():
        assert int(executions) > 20 and int(coverage) > 10, (target, logs[target])
        assert (crashes, hangs) == ("0", "0"), logs[target]
        assert "Uncaught Python exception" not in logs[target]
    assert not [path for path in (tmp_path / "artifacts").rglob("*") if path.is_file()]
