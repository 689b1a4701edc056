"""Where things live in a checkout of this project, and the names that may point there."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError
from .noop import STAMP_DIR

DEFAULT_BASELINE = "minixen"  # the bundled stand-in: what every command builds when no baseline is named

# What a checkout is, beside its caches and outputs: what audits, cluster workers, benchmarks and
# tests copy to rebuild elsewhere.
SOURCES = ("dodo.py", "pyproject.toml", "toolchain.lock", "baseline", "patches")

# A name becomes a path component: no separators, no leading dot, nothing a shell or
# a path join could turn into a way out of patches/, baseline/ or out/.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")


def check_name(kind: str, name: str) -> str:
    """Return `name` if it is safe as a single path component, else refuse in one line."""
    if not _NAME_RE.fullmatch(name) or ".." in name:
        raise ConfigError(
            f"{kind} name {name!r} is not allowed: use letters, digits and . _ + - "
            "(no slashes, no leading dot, at most 100 characters)"
        )
    return name


def copy_sources(root: Path, destination: Path, extra: tuple[str, ...] = ()) -> None:
    """Copy a checkout's sources (and the `extra` entries, e.g. work/) from `root` into `destination`."""
    destination.mkdir(parents=True, exist_ok=True)
    for name in SOURCES + extra:
        source = root / name
        if source.is_dir():
            shutil.copytree(source, destination / name, symlinks=True, ignore=_no_stamps(root))
        elif source.is_file():
            shutil.copy2(source, destination / name)


def _no_stamps(root: Path) -> Callable[[str, list[str]], list[str]]:
    """A copytree filter leaving out the no-op stamps (each is keyed to its own checkout's directory); their
    directory stays, as the place a run in the copy records its own."""
    stamps = root / STAMP_DIR

    def ignored(directory: str, names: list[str]) -> list[str]:
        return names if Path(directory) == stamps else []

    return ignored


@dataclass(frozen=True)
class Project:
    """The directories of one checkout; every stage takes paths from here."""

    root: Path

    @classmethod
    def find(cls, start: Path | None = None) -> Project:
        """The checkout holding `start` (default: XSPLICE_ROOT, else the current directory)."""
        here = Path(start or os.environ.get("XSPLICE_ROOT") or Path.cwd()).resolve()
        for candidate in (here, *here.parents):
            if (candidate / "dodo.py").is_file() and (candidate / "baseline").is_dir():
                return cls(candidate)
        raise ConfigError(f"{here}: not inside an xsplice-build checkout (no dodo.py with baseline/ beside it)")

    @property
    def baseline_dir(self) -> Path:
        return self.root / "baseline"

    @property
    def patches_dir(self) -> Path:
        return self.root / "patches"

    @property
    def work_dir(self) -> Path:
        return self.root / "work"

    @property
    def out_dir(self) -> Path:
        return self.root / "out"

    @property
    def lock_path(self) -> Path:
        return self.root / "toolchain.lock"

    @property
    def toolchain_state(self) -> Path:
        return self.work_dir / "toolchain.json"

    def baseline_work(self, baseline: str) -> Path:
        return self.work_dir / check_name("baseline", baseline)

    def patch_work(self, baseline: str, patch: str) -> Path:
        return self.baseline_work(baseline) / "patches" / check_name("patch", patch)

    def patch_out(self, baseline: str, patch: str) -> Path:
        return self.out_dir / check_name("baseline", baseline) / check_name("patch", patch)
