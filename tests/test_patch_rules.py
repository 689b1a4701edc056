"""Patches that are empty, binary, CRLF-mangled, change what files exist, or reach outside the tree: each
refused in one line by real git apply runs, and nothing outside the stage's tree is ever written."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from xsplice_build.errors import PatchError
from xsplice_build.stages.build import apply_patch

CANARY = "int canary = 1;\n"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A stage tree with a symlinked directory and a symlinked file pointing out of it, and a canary outside."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "canary.c").write_text(CANARY)
    tree = tmp_path / "stage" / "tree"
    (tree / "common").mkdir(parents=True)
    (tree / "common" / "a.c").write_text("int a(void)\n{\n    return 1;\n}\n")
    (tree / "link").symlink_to(outside)
    (tree / "flink.c").symlink_to(outside / "canary.c")
    return tree


def _diff(path: str, old: str, new: str) -> str:
    return (f"diff --git a/{path} b/{path}\n--- a/{path}\n+++ b/{path}\n@@ -1 +1 @@\n-{old.rstrip()}\n"
            f"+{new.rstrip()}\n")


def _git_diff(tmp_path: Path, change: str) -> str:
    """A patch made by real git from a repository where `change` (shell) was committed."""
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    script = ("git init -q . && mkdir common && printf 'int a(void)\\n{\\n    return 1;\\n}\\n' > common/a.c && "
              f"git add -A && git commit -qm base && {change} && git add -A && git diff --cached --binary -M")
    return subprocess.run(["sh", "-c", script], cwd=repo, env=env, capture_output=True, text=True,
                          check=True).stdout


def _refused(tree: Path, text: str | bytes) -> str:
    patch = tree.parent / "fix.patch"
    patch.write_bytes(text.encode() if isinstance(text, str) else text)
    before = sorted(p.name for p in (tree.parent.parent / "outside").iterdir())
    with pytest.raises(PatchError) as error:
        apply_patch(patch, tree)
    message = str(error.value)
    assert message.startswith(f"{patch}: ") and "\n" not in message
    assert (tree.parent.parent / "outside" / "canary.c").read_text() == CANARY
    assert sorted(p.name for p in (tree.parent.parent / "outside").iterdir()) == before
    assert (tree / "common" / "a.c").read_text().endswith("return 1;\n}\n")
    return message


def test_an_ordinary_patch_applies(tree: Path) -> None:  # and writes inside the tree only
    patch = tree.parent / "fix.patch"
    patch.write_text(_git_diff(tree.parent.parent, "sed -i 's/return 1/return 2/' common/a.c"))
    assert apply_patch(patch, tree) == ["common/a.c"]
    assert "return 2;" in (tree / "common" / "a.c").read_text()
    assert (tree.parent.parent / "outside" / "canary.c").read_text() == CANARY


def test_a_new_source_file_is_allowed(tree: Path, tmp_path: Path) -> None:
    patch = tree.parent / "fix.patch"
    patch.write_text(_git_diff(tmp_path, "printf 'int b;\\n' > common/b.c"))
    assert apply_patch(patch, tree) == ["common/b.c"]
    assert (tree / "common" / "b.c").read_text() == "int b;\n"


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty patch: it changes no file"),
    ("From: someone\nSubject: [PATCH] a description and no diff\n\nJust words.\n", "empty patch"),
    (_diff("common/a.c", "int a(void)", "int b(void)").replace("\n", "\r\n"), "has CRLF line endings"),
    (_diff("../outside/canary.c", CANARY, "int canary = 2;"), "touches '../outside/canary.c', outside the"),
    (_diff("common/../../../outside/canary.c", CANARY, "int canary = 2;"), "outside the baseline's tree"),
    (_diff("link/canary.c", CANARY, "int canary = 2;"), "through the symbolic link link -> "),
    (_diff("flink.c", CANARY, "int canary = 2;"), "touches 'flink.c' through the symbolic link flink.c"),
    ("--- /OUTSIDE/canary.c\n+++ /OUTSIDE/canary.c\n@@ -1 +1 @@\n-int canary = 1;\n+int canary = 2;\n",
     "does not apply"),
])
def test_a_hostile_patch_is_refused_and_writes_nothing(tree: Path, text: str, message: str) -> None:
    text = text.replace("/OUTSIDE", str(tree.parent.parent / "outside"))
    assert message in _refused(tree, text)


@pytest.mark.parametrize(("change", "message"), [
    ("git rm -q common/a.c", "deletes common/a.c: a live patch replaces functions and cannot remove"),
    ("git mv common/a.c common/c.c", "renames common/{a.c => c.c}"),
    ("chmod +x common/a.c", "changes the mode of common/a.c: a live patch changes source text only"),
    ("ln -s /etc/passwd common/evil.c", "creates common/evil.c with mode 120000"),
    ("printf '\\000\\001\\002binary' > common/blob.bin", "changes common/blob.bin as a binary file"),
])
def test_changes_to_what_files_exist_are_refused(tree: Path, tmp_path: Path, change: str, message: str) -> None:
    assert message in _refused(tree, _git_diff(tmp_path, change))
