"""Fixtures: copies of this checkout in temporary directories, built by the real pipeline.

Tests never touch the checkout's own work/, out/ or keys/: each works in a copy, and
the expensive cold build is done once per session and copied (caches stay valid,
since every task path is relative to the checkout).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from xsplice_build.project import Project, copy_sources

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@dataclass
class Checkout:
    root: Path

    def doit(self, *args: str, check: bool = True, env: dict[str, str] | None = None,
             timeout: float = 600) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(BIN / "doit"), *args], cwd=self.root, capture_output=True, text=True,
                                env={**os.environ, "XSPLICE_ROOT": str(self.root), **(env or {})},
                                timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"doit {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n"
                                 f"{result.stderr}")
        return result

    def xsplice(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(BIN / "xsplice-build"), *args], cwd=self.root, capture_output=True,
                                text=True, check=False, timeout=300)
        if check and result.returncode != 0:
            raise AssertionError(f"xsplice-build {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def out(self, patch: str, baseline: str = "minixen") -> Path:
        return self.root / "out" / baseline / patch

    def work(self, *parts: str) -> Path:
        return self.root.joinpath("work", *parts)

    def report(self, patch: str, baseline: str = "minixen") -> dict:
        import json

        return json.loads((self.out(patch, baseline) / "report.json").read_text())


def copy_checkout(destination: Path, source: Path = REPO, with_state: bool = False) -> Checkout:
    copy_sources(source, destination, ("work", "out", "keys") if with_state else ())
    return Checkout(destination)


def one_line_failure(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a refused run prints (and assert it printed exactly one, and no traceback)."""
    assert result.returncode != 0
    text = result.stdout + result.stderr
    assert "Traceback" not in text
    failures = [line for line in text.splitlines() if "FAILED" in line or "error:" in line]
    assert len(failures) == 1, text
    return failures[0]


def xen_xsplice(checkout: Checkout, *args: str) -> subprocess.CompletedProcess[str]:
    """`xen-xsplice ARGS` in the checkout; it never raises: `ok` or `refused` says what was expected."""
    return subprocess.run([str(BIN / "xen-xsplice"), *args], cwd=checkout.root, capture_output=True, text=True,
                          env={**os.environ, "XSPLICE_ROOT": str(checkout.root)}, check=False, timeout=120)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """The output of a command that must have succeeded."""
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def refused(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a refused `xen-xsplice` printed on stderr (and no traceback)."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("xen-xsplice: ")
    return lines[0]


def minixen_running(built: Checkout, destination: Path) -> Iterator[Checkout]:
    """The body of a `running` fixture: a copy of a built checkout with minixen booted in the background
    (a child of this process), shut down afterwards if it still runs."""
    from xsplice_build.runtime import hypervisor
    from xsplice_build.vm.channel import RunDir

    checkout = copy_checkout(destination, built.root, with_state=True)
    project = Project(checkout.root)
    hypervisor.boot(project, "minixen")
    yield checkout
    if RunDir.of(project).pid() is not None:
        hypervisor.shutdown(project)


@pytest.fixture
def checkout(tmp_path: Path) -> Checkout:
    """A fresh copy of this checkout: sources only, nothing built."""
    return copy_checkout(tmp_path / "checkout")


@pytest.fixture(scope="session")
def built_once(tmp_path_factory: pytest.TempPathFactory) -> Checkout:
    """One copy where both bundled patches were built through the pipeline (shared, do not modify)."""
    built = copy_checkout(tmp_path_factory.mktemp("built") / "checkout")
    built.doit("build-patch", "XSA-131")
    built.doit("build-patch", "regression-test")
    return built


@pytest.fixture
def built(built_once: Checkout, tmp_path: Path) -> Iterator[Checkout]:
    """A private copy of the built checkout, caches intact, to modify freely."""
    yield copy_checkout(tmp_path / "built", built_once.root, with_state=True)


MINIXEN_TIER = ("--baseline", "minixen", "--baseline", "minixen-1.1")  # the baselines a nightly of this tier builds
CHAIN = ("stack-1", "stack-2", "stack-3")  # patches/stack-N/advisory.toml: each goes on top of the one before


@pytest.fixture(scope="session")
def nightly_once(tmp_path_factory: pytest.TempPathFactory) -> Checkout:
    """One copy where `doit -n 2 nightly` built the minixen tier's every pair (shared, do not modify): the
    release the other nightlies (a second one, the audit, the cluster's) must reproduce byte for byte."""
    checkout = copy_checkout(tmp_path_factory.mktemp("nightly") / "checkout")
    checkout.doit("-n", "2", "nightly", *MINIXEN_TIER)
    return checkout


@pytest.fixture(scope="session")
def stacks_built(built_once: Checkout, tmp_path_factory: pytest.TempPathFactory) -> Checkout:
    """A copy of the built checkout where the stacked chain's tip, the cumulative payloads of the whole chain
    and of its first two, and the hook payloads were built (shared, do not modify)."""
    built = copy_checkout(tmp_path_factory.mktemp("stacks") / "checkout", built_once.root, with_state=True)
    built.doit("build-patch", CHAIN[-1])
    built.doit("build-patch", "--replace", *CHAIN)
    built.doit("build-patch", "--replace", *CHAIN[:2])
    for patch in ("hook-counter", "hook-preapply-fails"):
        built.doit("build-patch", patch)
    return built


# Fixtures that copy, build, boot or start something through the real pipeline. A test that uses none of them,
# and copies or runs no checkout itself, is in the fast tier (`pytest -m fast`, run on every change); one that
# does is there only when marked fast.
PIPELINE_FIXTURES = frozenset({"checkout", "checkout_project", "built", "built_once", "full_run", "corpus", "running",
                               "cluster", "nightly_once", "stacks_built", "xen"})
PIPELINE_CALLS = ("copy_checkout(", ".doit(", '"doit"')


def _runs_the_pipeline(function: object) -> bool:
    import inspect

    try:
        source = inspect.getsource(function)  # type: ignore[arg-type]
    except (OSError, TypeError):
        return False
    return any(call in source for call in PIPELINE_CALLS)


def _fixture_closure_runs_the_pipeline(item: pytest.Item) -> bool:
    """Whether any fixture the test uses, directly or through other fixtures, is or calls the pipeline.

    A module fixture of a test file (e.g. one that builds a chain of payloads) counts as much as the shared ones.
    """
    names = set(getattr(item, "fixturenames", ()))
    if names & PIPELINE_FIXTURES:
        return True
    definitions = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
    return any(_runs_the_pipeline(definition.func) for name in names for definition in definitions.get(name, ()))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("fast") or item.get_closest_marker("xen") or item.get_closest_marker("vm"):
            continue
        function = getattr(item, "function", None)
        if not _fixture_closure_runs_the_pipeline(item) and not (function and _runs_the_pipeline(function)):
            item.add_marker(pytest.mark.fast)
