"""Checkout: the bundled source reaches a pristine tree through git, pinned and reproducible."""

from __future__ import annotations

from pathlib import Path

import git
import pytest
from conftest import Checkout, copy_checkout

from xsplice_build.errors import ConfigError
from xsplice_build.project import Project
from xsplice_build.stages.checkout import checkout, directory_commits
from xsplice_build.target.baseline import load_baseline


def test_checkout_gives_a_clean_tree_at_the_pinned_commit(checkout_project: Project) -> None:
    baseline = load_baseline(checkout_project, "minixen")
    result = checkout(checkout_project, baseline)
    repo = git.Repo(checkout_project.root / result.tree)
    try:
        assert repo.head.commit.hexsha == baseline.source.commit
        assert not repo.is_dirty(untracked_files=True)
    finally:
        repo.close()


def test_an_intact_tree_is_kept_and_a_changed_one_checked_out_again(checkout_project: Project) -> None:
    baseline = load_baseline(checkout_project, "minixen")
    tree = checkout_project.root / checkout(checkout_project, baseline).tree
    kept = tree / "common" / "version.c"
    before = kept.stat()
    assert checkout(checkout_project, baseline).tree == checkout(checkout_project, baseline).tree
    assert kept.stat().st_ino == before.st_ino and kept.stat().st_mtime_ns == before.st_mtime_ns
    (tree / "stray.o").write_bytes(b"left by someone")  # an added file: the tree is not pristine any more
    kept.write_text(kept.read_text() + "/* edited */\n")
    checkout(checkout_project, baseline)
    assert not (tree / "stray.o").exists() and "edited" not in kept.read_text()


def test_the_same_files_give_the_same_commit_in_another_directory(checkout_project: Project,
                                                                   tmp_path: Path) -> None:
    other = Project(copy_checkout(tmp_path / "elsewhere").root)
    first = directory_commits(checkout_project, load_baseline(checkout_project, "minixen"))
    assert directory_commits(other, load_baseline(other, "minixen")) == first


def test_changed_bundled_files_are_refused_with_the_commit_to_pin(checkout_project: Project) -> None:
    source = checkout_project.baseline_dir / "sources" / "minixen" / "common" / "version.c"
    source.write_text(source.read_text() + "\n/* an unreviewed change */\n")
    with pytest.raises(ConfigError) as error:
        checkout(checkout_project, load_baseline(checkout_project, "minixen"))
    message = str(error.value)
    assert "pinned commit" in message and "update the pin" in message
    new = directory_commits(checkout_project, load_baseline(checkout_project, "minixen"))[-1]
    assert new in message


@pytest.fixture
def checkout_project(checkout: Checkout) -> Project:
    return Project(checkout.root)
