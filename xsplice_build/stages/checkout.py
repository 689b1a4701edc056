"""Stage 1, checkout: a pristine tree of the baseline at its pinned commit.

Every kind of source reaches the tree the same way, through a git repository: a
remote is cloned; a plain directory (the bundled minixen, an unpacked Debian source
package) is first committed into a repository keyed by its content, with fixed
authorship and dates, so the same files give the same commit on any machine and
the definition's pinned commit proves the files are the ones reviewed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import git

from ..errors import ConfigError, XspliceError
from ..files import remove_tree
from ..project import Project
from ..target.baseline import Baseline, Source

# Commits made from plain directories carry no personal data and no wall-clock time.
_EPOCH = 1439856000  # 2015-08-18, the xSplice design session; any fixed value would do.
_GIT_CONFIG = ("-c", "core.autocrlf=false", "-c", "core.fileMode=true", "-c", "commit.gpgsign=false",
               "-c", "core.hooksPath=/dev/null", "-c", "init.defaultBranch=main")


@dataclass(frozen=True)
class CheckoutResult:
    baseline: str
    commit: str
    tree: str  # relative to the project root
    source: str


def checkout(project: Project, baseline: Baseline) -> CheckoutResult:
    """Make work/<baseline>/src a clean clone of the source repository at the pinned commit.

    A tree already there at that commit with nothing changed, added or removed (git says so)
    is kept as it is: cloning it again would give the same files.
    """
    repository = source_repository(project, baseline)
    tree = project.baseline_work(baseline.name) / "src"
    result = CheckoutResult(baseline.name, baseline.source.commit, str(tree.relative_to(project.root)),
                            describe_source(baseline.source, project))
    if pristine_at(tree, baseline.source.commit):
        return result
    remove_tree(tree)
    tree.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".src-", dir=tree.parent))
    try:
        _run_git(["clone", "--quiet", "--no-checkout", "--shared", str(repository), str(staging)])
        _require_commit(staging, baseline)
        _run_git(["-C", str(staging), "checkout", "--quiet", "--detach", baseline.source.commit])
        staging.rename(tree)
    finally:
        remove_tree(staging)
    return result


def pristine_at(tree: Path, commit: str) -> bool:
    """Whether `tree` is a checkout at `commit` with no file changed, added or removed (ignored ones included)."""
    if not (tree / ".git").exists():
        return False
    head = _git_output(tree, "rev-parse", "HEAD")
    status = _git_output(tree, "status", "--porcelain", "--untracked-files=all", "--ignored")
    return head is not None and head.strip() == commit and status == ""


def _git_output(tree: Path, *args: str) -> str | None:
    """git's output in `tree` (never a repository above it), or None when it fails."""
    result = subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True, check=False,
                            env={**os.environ, "LC_ALL": "C", "GIT_CONFIG_NOSYSTEM": "1",
                                 "GIT_CEILING_DIRECTORIES": str(tree.parent)})
    return result.stdout if result.returncode == 0 else None


def describe_source(source: Source, project: Project | None = None) -> str:
    """How reports name the source: inside the checkout by a relative path, so reports do not vary by directory."""
    if source.git:
        return source.git
    if source.debian:
        return f"debian:{source.debian}"
    assert source.path is not None
    if project and source.path.resolve().is_relative_to(project.root.resolve()):
        return source.path.resolve().relative_to(project.root.resolve()).as_posix()
    return str(source.path)


def source_repository(project: Project, baseline: Baseline) -> Path:
    """The git repository holding the baseline's history, made or fetched on first use."""
    source = baseline.source
    sources = project.work_dir / "sources"
    sources.mkdir(parents=True, exist_ok=True)
    if source.git:
        return _mirror_remote(sources, source.git, source.commit)
    if source.debian:
        unpacked = _unpack_debian_source(sources, source.debian)
        return _repository_from_directory(sources, unpacked, None)
    assert source.path is not None
    if not source.path.is_dir():
        raise ConfigError(f"{baseline.definition}: [source] path {source.path} is not a directory")
    if (source.path / ".git").exists():
        return source.path
    return _repository_from_directory(sources, source.path, source.series)


def directory_commits(project: Project, baseline: Baseline) -> list[str]:
    """Commits of the repository made from a plain directory, oldest first (to update a pin)."""
    repository = source_repository(project, baseline)
    return _run_git(["-C", str(repository), "rev-list", "--reverse", "HEAD"]).split()


def _repository_from_directory(sources: Path, directory: Path, series: Path | None) -> Path:
    patches = sorted(series.glob("*.patch")) if series else []
    key = _content_key(directory, patches)
    repository = sources / f"{directory.name}-{key[:16]}.git"
    if (repository / "HEAD").is_file():
        return repository
    with tempfile.TemporaryDirectory(prefix=".make-", dir=sources) as scratch:
        work = Path(scratch) / "work"
        shutil.copytree(directory, work, symlinks=True, ignore=shutil.ignore_patterns(".pc", ".git"))
        _run_git(["init", "--quiet", str(work)])
        _commit_all(work, f"import {directory.name}", 0)
        for number, patch in enumerate(patches, start=1):
            _run_git(["-C", str(work), "apply", "--index", str(patch.resolve())],
                     failure=f"{patch}: does not apply to the previous release of {directory.name}")
            _commit_all(work, patch.stem, number)
        staged = Path(scratch) / "bare.git"
        _run_git(["clone", "--quiet", "--bare", str(work), str(staged)])
        staged.rename(repository)
    return repository


def _commit_all(work: Path, message: str, number: int) -> None:
    when = f"@{_EPOCH + number * 86400} +0000"
    env = {"GIT_AUTHOR_NAME": "xsplice-build", "GIT_AUTHOR_EMAIL": "xsplice-build@localhost",
           "GIT_COMMITTER_NAME": "xsplice-build", "GIT_COMMITTER_EMAIL": "xsplice-build@localhost",
           "GIT_AUTHOR_DATE": when, "GIT_COMMITTER_DATE": when}
    _run_git(["-C", str(work), "add", "--all", "--force"])
    _run_git(["-C", str(work), "commit", "--quiet", "--allow-empty", "--no-verify", "-m", message], env=env)


def _content_key(directory: Path, patches: list[Path]) -> str:
    """sha256 over every file's path, mode and bytes: the repository's identity."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if ".git" not in p.parts and ".pc" not in p.parts):
        relative = path.relative_to(directory).as_posix()
        if path.is_symlink():
            digest.update(f"L {relative} {os.readlink(path)}\n".encode())
        elif path.is_file():
            executable = os.access(path, os.X_OK)
            digest.update(f"F {relative} {int(executable)} {path.stat().st_size}\n".encode())
            digest.update(path.read_bytes())
    for patch in patches:
        digest.update(f"P {patch.name}\n".encode())
        digest.update(patch.read_bytes())
    return digest.hexdigest()


def _mirror_remote(sources: Path, url: str, commit: str) -> Path:
    repository = sources / f"git-{hashlib.sha256(url.encode()).hexdigest()[:16]}.git"
    if not (repository / "HEAD").is_file():
        with tempfile.TemporaryDirectory(prefix=".clone-", dir=sources) as scratch:
            staged = Path(scratch) / "bare.git"
            _run_git(["clone", "--quiet", "--bare", url, str(staged)], failure=f"cannot clone {url}")
            staged.rename(repository)
    if not _has_commit(repository, commit):
        _run_git(["-C", str(repository), "fetch", "--quiet", "origin", "+refs/*:refs/*"],
                 failure=f"cannot fetch {url}")
    return repository


def _unpack_debian_source(sources: Path, pinned: str) -> Path:
    """`apt-get source PACKAGE=VERSION`, with Debian's own patches applied as dpkg-source does."""
    package, version = pinned.split("=", 1)
    target = sources / f"debian-{package}-{version.replace(':', '_')}"
    unpacked = [p for p in target.glob(f"{package}-*") if p.is_dir()] if target.is_dir() else []
    if unpacked:
        return unpacked[0]
    with tempfile.TemporaryDirectory(prefix=".apt-", dir=sources) as scratch:
        result = subprocess.run(["apt-get", "source", "--quiet", "--quiet", pinned], cwd=scratch,
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise XspliceError(f"apt-get source {pinned} failed: {reason}; enable deb-src entries "
                               "(see README, 'Real Xen') and run apt-get update")
        Path(scratch).rename(target)
        os.mkdir(scratch)  # TemporaryDirectory removes its path on exit
    return next(p for p in target.glob(f"{package}-*") if p.is_dir())


def _require_commit(clone: Path, baseline: Baseline) -> None:
    if _has_commit(clone, baseline.source.commit):
        return
    hint = ""
    source = baseline.source
    if source.debian or (source.path and not (source.path / ".git").exists()):
        commits = _run_git(["-C", str(clone), "rev-list", "--reverse", "--all"]).split()
        hint = f"; the files there give {', '.join(commits)} (oldest first): review the change, then update the pin"
    raise ConfigError(f"{baseline.definition}: pinned commit {baseline.source.commit} is not in "
                      f"{describe_source(baseline.source)}{hint}")


def _has_commit(repository: Path, commit: str) -> bool:
    result = subprocess.run(["git", "-C", str(repository), "cat-file", "-e", f"{commit}^{{commit}}"],
                            capture_output=True, check=False)
    return result.returncode == 0


def _run_git(args: list[str], env: dict[str, str] | None = None, failure: str | None = None) -> str:
    """Run git through GitPython's command wrapper, with settings that make results reproducible."""
    environment = {"LC_ALL": "C", "GIT_CONFIG_NOSYSTEM": "1", **(env or {})}
    try:
        return git.Git().execute(["git", *_GIT_CONFIG, *args], env=environment)
    except git.GitCommandError as error:
        detail = (str(error.stderr).strip().strip("'").splitlines() or ["no output"])[-1].strip()
        raise XspliceError(f"{failure or 'git ' + args[0] + ' failed'}: {detail}") from None
