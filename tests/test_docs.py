"""The documentation runs: every shell block of README.md and docs/ is either run here or marked as an example.

A fenced block whose info string is `sh tested` is run, line by line with `set -e`, in a
copy of a checkout where both bundled patches were built (the `.venv` of this one beside
it); `sh tested-xen` blocks run the same way in the `xen` tier; `sh example` blocks need
what a test cannot have (a fresh machine's setup, a Dask scheduler, 30 minutes of fuzzing).
Links between the documents must resolve, and nothing points outside the repository.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO, Checkout

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(?P<info>[^\n`]*)\n(?P<body>.*?)^```$", re.MULTILINE | re.DOTALL)
KINDS = {"sh tested", "sh tested-xen", "sh example"}


@dataclass(frozen=True)
class Block:
    document: Path
    line: int
    info: str
    body: str

    @property
    def name(self) -> str:
        return f"{self.document.relative_to(REPO)}:{self.line}"


def blocks() -> list[Block]:
    found = []
    for document in DOCUMENTS:
        text = document.read_text()
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append(Block(document, line, match.group("info").strip(), match.group("body")))
    return found


SHELL = [block for block in blocks() if block.info.split(" ")[0] in ("sh", "bash", "shell", "console")]


@pytest.mark.fast
def test_every_shell_block_is_tested_or_marked_as_an_example() -> None:
    unmarked = [f"{block.name} ({block.info!r})" for block in SHELL if block.info not in KINDS]
    assert unmarked == [], "mark each as `sh tested`, `sh tested-xen` or `sh example`"
    assert sum(block.info == "sh tested" for block in SHELL) >= 10


@pytest.mark.fast
def test_links_resolve_and_nothing_points_outside_the_repository() -> None:
    for document in DOCUMENTS:
        text = document.read_text()
        assert "../shared" not in text and "/work/" not in text, document
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
            if target.startswith(("http://", "https://")):
                continue
            assert (document.parent / target).resolve().is_relative_to(REPO), (document, target)
            assert (document.parent / target).exists(), (document, target)


@pytest.mark.fast
def test_the_readme_is_short() -> None:
    assert len((REPO / "README.md").read_text().splitlines()) < 150


def _run(block: Block, checkout: Checkout) -> None:
    venv = checkout.root / ".venv"
    if not venv.exists():
        venv.symlink_to(Path(sys.executable).parent.parent)
    env = {**os.environ, "XSPLICE_ROOT": str(checkout.root), "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    script = f"set -eu\ncd {checkout.root}\n{block.body}"
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=1800,
                            check=False)
    assert result.returncode == 0, f"{block.name}:\n{block.body}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


@pytest.mark.parametrize("block", [b for b in SHELL if b.info == "sh tested"], ids=lambda b: b.name)
def test_a_documented_command_runs(block: Block, built: Checkout) -> None:
    _run(block, built)


@pytest.mark.xen
@pytest.mark.parametrize("block", [b for b in SHELL if b.info == "sh tested-xen"], ids=lambda b: b.name)
def test_a_documented_real_xen_command_runs(block: Block, built: Checkout) -> None:
    _run(block, built)
