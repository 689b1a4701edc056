"""Baseline definitions: read strictly, each mistake named with its file and key."""

from __future__ import annotations

import pytest
from conftest import Checkout

from xsplice_build.errors import ConfigError
from xsplice_build.project import Project
from xsplice_build.target.baseline import load_baseline


def test_the_bundled_definition_loads(checkout: Checkout) -> None:
    baseline = load_baseline(Project(checkout.root), "minixen")
    assert baseline.source.kind == "path" and baseline.build.image == "xen-syms"
    assert baseline.profile == "xen-x86_64"


@pytest.mark.parametrize(("edit", "message"), [
    (lambda t: t.replace("[target]", "[targett]"), "unknown key 'targett'"),
    (lambda t: t.replace('image = "xen-syms"', "image = 3"), "[build] key 'image' must be a string"),
    (lambda t: t.replace('image = "xen-syms"\n', ""), "[build] missing key 'image'"),
    (lambda t: t.replace('commit = "', 'commit = "zz', 1), "key 'commit' must be 40 lowercase hex digits"),
    (lambda t: t.replace('split_sections = "wrapper"', 'split_sections = "always"'), "'split_sections' must be"),
    (lambda t: t.replace('path = "sources/minixen"', 'path = "sources/minixen"\ngit = "x"'), "exactly one of"),
    (lambda t: t + "\n[build\n", "not valid TOML"),
    (lambda t: t.replace('description = "', 'description = 3 #"'),
     "key 'description' must be a string (one line for `doit list`), not int"),
    (lambda t: t.replace('command = ["make",', 'command = [1, "make",'),
     "[build] key 'command' must be a list of strings"),
    (lambda t: t.replace('command = ["make", "-j{jobs}", "CC={cc}", "LD={ld}"]', 'command = "make"'),
     "[build] key 'command' must be a list"),
    (lambda t: t.replace('[source]', 'source = "sources/minixen"\n[unused]'), "unknown key 'unused'"),
    (lambda t: t.replace('commit = "', 'commit = 7 #"'), "[source] key 'commit' must be a string"),
    (lambda t: t.replace('split_sections = "wrapper"', "split_sections = true"), "'split_sections' must be a string"),
    (lambda t: t.replace('[target]\nprofile = "xen-x86_64"', '[target]\nprofile = ["xen-x86_64"]'),
     "[target] key 'profile' must be a string"),
])
def test_a_malformed_definition_is_refused(checkout: Checkout, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    path = checkout.root / "baseline" / "minixen.toml"
    path.write_text(edit(path.read_text()))
    with pytest.raises(ConfigError) as error:
        load_baseline(Project(checkout.root), "minixen")
    assert message in str(error.value) and "minixen.toml" in str(error.value)


@pytest.mark.parametrize("name", ["../minixen", "/etc/passwd", ".hidden", "a/b", ""])
def test_names_that_would_leave_baseline_dir_are_refused(checkout: Checkout, name: str) -> None:
    with pytest.raises(ConfigError, match="is not allowed"):
        load_baseline(Project(checkout.root), name)


def test_a_definition_that_is_not_text_is_refused(checkout: Checkout) -> None:
    path = checkout.root / "baseline" / "minixen.toml"
    path.write_bytes(b"\x7fELF\x02\x01\x01\xff\xfe binary")
    with pytest.raises(ConfigError) as error:
        load_baseline(Project(checkout.root), "minixen")
    assert str(error.value).startswith(f"{path}: ") and "\n" not in str(error.value)
