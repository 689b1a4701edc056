"""The diff corpus's shared parts: a built case, its expect.toml, and the checks every baseline's corpus makes.

tests/test_corpus.py (minixen) and tests/test_xen_corpus.py (real Xen) build patches/<case>/ through
the pipeline and check it against its expectation with these.
"""

from __future__ import annotations

import json
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

from conftest import REPO, Checkout

from xsplice_build.diff.rules import RULES

KEYS = {"corpus", "outcome", "patched", "new", "references", "carried", "not_carried", "strings", "special_entries",
        "rule", "cites", "notes", "not_noted"}


def expectation(case: str) -> dict:
    """patches/CASE/expect.toml, with no key the corpus does not know."""
    expect = tomllib.loads((REPO / "patches" / case / "expect.toml").read_text())
    assert set(expect) <= KEYS, f"{case}: unknown keys {set(expect) - KEYS}"
    return expect


@dataclass
class Built:
    """What `doit build-patch CASE` said, and the checkout it wrote in."""

    case: str
    baseline: str
    result: subprocess.CompletedProcess[str]
    checkout: Checkout

    @property
    def output(self) -> str:
        return self.result.stdout + self.result.stderr

    @property
    def work(self) -> Path:
        return self.checkout.work(self.baseline, "patches", self.case)

    @property
    def error_line(self) -> str:
        return next((line for line in self.output.splitlines() if "FAILED" in line), "")

    def explained(self) -> list[dict]:
        path = self.work / "diff.explain.json"
        return json.loads(path.read_text())["objects"] if path.exists() else []

    def notes(self) -> list[str]:
        return [note for record in self.explained()
                for note in record["ignored"] + record["warnings"] + record.get("bring_up", [])]


def check_outcome(built: Built, expect: dict) -> None:
    """The outcome, the rule, the error line's citations and the notes the case expects (and those it must not)."""
    assert "Traceback" not in built.output, built.output
    if expect["outcome"] == "payload":
        assert built.result.returncode == 0, built.output
    else:
        assert built.result.returncode != 0 and built.error_line, built.output
        assert not built.checkout.out(built.case, built.baseline).exists(), "no payload when the build refuses"
    if expect["outcome"] == "unpatchable":
        assert expect["rule"] in RULES and f"[rule: {expect['rule']}]" in built.error_line
    for text in expect.get("cites", []):
        assert text in built.error_line, built.error_line
    notes = built.notes()
    for text in expect.get("notes", []):
        assert any(text in note for note in notes), (text, notes)
    for text in expect.get("not_noted", []):
        assert not any(text in note for note in notes), (text, notes)
