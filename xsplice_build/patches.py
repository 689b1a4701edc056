"""Patches (patches/NAME/BASELINE.patch): one advisory, one variant per baseline it fixes.

Real advisories ship one patch per supported Xen version, so a patch NAME is a
directory holding a variant for each baseline it exists for, named after the
baseline; the nightly build builds every (patch, baseline) pair that has a variant,
except the cases of the diff's test corpus (`corpus = true` in patches/NAME/expect.toml),
which are test material, not advisories to release.
"""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError
from .project import Project, check_name
from .schema import load_toml


def patch_names(project: Project) -> list[str]:
    if not project.patches_dir.is_dir():
        return []
    return sorted(p.name for p in project.patches_dir.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and any(p.glob("*.patch")))


def variants(project: Project, name: str) -> list[str]:
    """The baselines patch `name` has a variant for."""
    return sorted(p.stem for p in (project.patches_dir / name).glob("*.patch"))


def patch_file(project: Project, name: str, baseline: str) -> Path:
    """The variant of patch `name` for `baseline`; unknown names list what exists."""
    check_name("patch", name)
    check_name("baseline", baseline)
    directory = project.patches_dir / name
    if not directory.is_dir():
        known = ", ".join(patch_names(project)) or "none"
        raise ConfigError(f"unknown patch {name!r}: no patches/{name}/ directory (known patches: {known})")
    path = directory / f"{baseline}.patch"
    if not path.is_file():
        have = ", ".join(variants(project, name)) or "none"
        raise ConfigError(f"patch {name!r} has no variant for baseline {baseline!r}: no patches/{name}/"
                          f"{baseline}.patch (it has variants for: {have})")
    if path.is_symlink() or not path.resolve().is_relative_to(project.patches_dir.resolve()):
        raise ConfigError(f"patches/{name}/{baseline}.patch: must be a regular file inside patches/")
    return path


def pairs(project: Project, baselines: list[str]) -> list[tuple[str, str]]:
    """Every (baseline, patch) with a variant, for the nightly build and for task generation."""
    return [(baseline, name) for name in patch_names(project) for baseline in variants(project, name)
            if baseline in baselines]


def release_pairs(project: Project, baselines: list[str]) -> list[tuple[str, str]]:
    """The pairs the nightly releases: every pair but those of the diff's test corpus."""
    return [(baseline, name) for baseline, name in pairs(project, baselines) if not is_corpus_case(project, name)]


def is_corpus_case(project: Project, name: str) -> bool:
    """Whether patch `name` is a case of the diff's test corpus (its expect.toml says corpus = true)."""
    path = project.patches_dir / name / "expect.toml"
    if not path.is_file():
        return False
    return load_toml(path).get("corpus") is True
