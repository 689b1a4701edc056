"""Patches (patches/NAME/BASELINE.patch): one advisory, one variant per baseline it fixes; stacks and cumulatives.

Real advisories ship one patch per supported Xen version, so a patch NAME is a
directory holding a variant for each baseline it exists for, named after the
baseline; the nightly build builds every (patch, baseline) pair that has a variant,
except the cases of the diff's test corpus (`corpus = true` in patches/NAME/expect.toml),
which are test material, not advisories to release.

An advisory may go on top of another (`after = ["XSA-A"]` in patches/NAME/advisory.toml):
its payload is built against the baseline with the earlier patches applied and goes on
top of the earlier payload (`BuildSpec`). A cumulative payload ("XSA-A+XSA-B") carries
several advisories' fixes against the baseline, for Xen's REPLACE action.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError
from .files import sha256_file
from .project import Project, check_name
from .schema import Field, check_string_list, check_table, load_toml


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
    """The pairs the nightly releases: every pair but those of the diff's test corpus, and each chain's cumulatives."""
    single = [(baseline, name) for baseline, name in pairs(project, baselines) if not is_corpus_case(project, name)]
    return single + [(baseline, name) for baseline, name in cumulative_pairs(project, baselines)
                     if not any(is_corpus_case(project, fix) for fix in name.split(CUMULATIVE_JOIN))]


def is_corpus_case(project: Project, name: str) -> bool:
    """Whether patch `name` is a case of the diff's test corpus (its expect.toml says corpus = true)."""
    path = project.patches_dir / name / "expect.toml"
    if not path.is_file():
        return False
    return load_toml(path).get("corpus") is True


# A cumulative payload is named after the advisories it carries, joined: "XSA-A+XSA-B".
CUMULATIVE_JOIN = "+"
ADVISORY_FILE = "advisory.toml"
_ADVISORY = {
    "after": Field(list, what="the advisory this one's payload goes on top of (one name: Xen's "
                              ".livepatch.depends holds one build-id)"),
}


@dataclass(frozen=True)
class BuildSpec:
    """What one payload is built from: the tree it is diffed against and the fixes it carries.

    `stack` are the advisories already applied (oldest first): their patches make the tree the
    payload is diffed against, and the payload goes on top of the last one's payload. `fixes`
    are the patches the payload carries. A cumulative payload has no stack, carries several
    fixes, and is applied with Xen's REPLACE action (it swaps out every applied payload).
    """

    name: str
    stack: tuple[str, ...]
    fixes: tuple[str, ...]

    @property
    def action(self) -> str:
        return "replace" if len(self.fixes) > 1 else "apply"

    @property
    def depends_on(self) -> str | None:
        """The advisory whose payload this one goes on top of (the stack's last), or None: the image itself."""
        return self.stack[-1] if self.stack else None



def after(project: Project, name: str) -> str | None:
    """The advisory `name` goes on top of, from patches/NAME/advisory.toml (None when it stands alone)."""
    path = project.patches_dir / check_name("patch", name) / ADVISORY_FILE
    if not path.is_file():
        return None
    table = check_table(path, "", load_toml(path), _ADVISORY)
    earlier = check_string_list(path, "", "after", table.get("after", []))
    if len(earlier) > 1:
        raise ConfigError(f"{path}: after = {earlier}: a payload goes on top of exactly one payload (Xen's "
                          ".livepatch.depends holds one build-id); name the latest, it names the one before")
    return check_name("patch", earlier[0]) if earlier else None


def chain(project: Project, name: str) -> tuple[str, ...]:
    """The advisories `name` is stacked on, oldest first (refusing a cycle)."""
    found: list[str] = []
    current = after(project, name)
    while current is not None:
        if current == name or current in found:
            raise ConfigError(f"patches/{name}/{ADVISORY_FILE}: the 'after' chain loops back to {current!r}")
        found.append(current)
        current = after(project, current)
    return tuple(reversed(found))


def build_spec(project: Project, name: str, baseline: str) -> BuildSpec:
    """The spec of payload `name` for `baseline`; every patch it needs must have a variant there."""
    if CUMULATIVE_JOIN in name:
        fixes = tuple(name.split(CUMULATIVE_JOIN))
        if len(fixes) < 2 or len(set(fixes)) != len(fixes):
            raise ConfigError(f"{name!r}: a cumulative payload names two or more different advisories joined by "
                              f"{CUMULATIVE_JOIN!r}")
        spec = BuildSpec(name, (), fixes)
    else:
        spec = BuildSpec(name, chain(project, name), (name,))
    for advisory in spec.stack + spec.fixes:
        patch_file(project, advisory, baseline)
    return spec


def spec_files(project: Project, spec: BuildSpec, baseline: str) -> tuple[list[Path], list[Path]]:
    """(the stack's patch files, the fixes' patch files), each in the order they are applied."""
    return ([patch_file(project, name, baseline) for name in spec.stack],
            [patch_file(project, name, baseline) for name in spec.fixes])


def pair_patch_digest(project: Project, name: str, baseline: str) -> str:
    """A payload's `patch_sha256`: of its own patch; for a cumulative one, of its fixes' patches in order."""
    _stack, fixes = spec_files(project, build_spec(project, name, baseline), baseline)
    if len(fixes) == 1:
        return sha256_file(fixes[0])
    return hashlib.sha256(b"".join(path.read_bytes() for path in fixes)).hexdigest()


def cumulative_pairs(project: Project, baselines: list[str]) -> list[tuple[str, str]]:
    """For every stacked chain A <- B <- C, the cumulative payloads A+B and A+B+C (the nightly ships them)."""
    found = set()
    for baseline, name in pairs(project, baselines):
        stack = chain(project, name)
        if stack and all(baseline in variants(project, earlier) for earlier in stack):
            found.add((baseline, CUMULATIVE_JOIN.join((*stack, name))))
    return sorted(found)


def requested(project: Project, baselines: list[str], names: list[str]) -> list[tuple[str, str]]:
    """The pairs of the cumulative payloads `names` asked for (by an audit), on the baselines where they build."""
    wanted = []
    for name in names:
        for baseline in baselines:
            fixes = name.split(CUMULATIVE_JOIN)
            if all(baseline in variants(project, fix) for fix in fixes):
                wanted.append((baseline, name))
    return wanted
