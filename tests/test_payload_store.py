"""The payload store: keyed by every input, whole entries only, damaged ones ignored."""

from __future__ import annotations

from pathlib import Path

from conftest import Checkout

from xsplice_build.project import Project
from xsplice_build.release.payload_store import StoredResult, lookup, put, store_key

LOCK = "a" * 64


def test_the_key_changes_with_every_input(checkout: Checkout) -> None:
    project = Project(checkout.root)
    key = store_key(project, "minixen", "XSA-131", LOCK)
    assert key == store_key(Project(checkout.root), "minixen", "XSA-131", LOCK)
    assert key != store_key(project, "minixen-1.1", "XSA-131", LOCK)
    assert key != store_key(project, "minixen", "regression-test", LOCK)
    assert key != store_key(project, "minixen", "XSA-131", "b" * 64)
    patch = checkout.root / "patches" / "XSA-131" / "minixen.patch"
    patch.write_bytes(patch.read_bytes() + b"\n")
    assert key != store_key(project, "minixen", "XSA-131", LOCK)
    patch.write_bytes(patch.read_bytes()[:-1])
    definition = checkout.root / "baseline" / "minixen.toml"
    definition.write_text(definition.read_text().replace("description = ", "description = \"x\"\n#"))
    assert key != store_key(project, "minixen", "XSA-131", LOCK)


def test_an_entry_is_returned_whole_and_a_damaged_one_is_ignored(tmp_path: Path) -> None:
    store = tmp_path / "store"
    result = StoredResult(records={"base.json": "{}\n"}, unsigned=b"\x7fELF payload")
    assert lookup(store, "c" * 64) is None
    put(store, "c" * 64, result)
    assert lookup(store, "c" * 64) == result
    put(store, "c" * 64, result)  # a second writer of the same key changes nothing
    payload = store / "cc" / ("c" * 64) / "payload.unsigned"
    payload.write_bytes(b"\x7fELF tampered")
    assert lookup(store, "c" * 64) is None
    put(store, "c" * 64, result)  # rebuilt and stored again over the damaged entry
    assert lookup(store, "c" * 64) == result
    assert [p.name for p in (store / "cc").iterdir()] == ["c" * 64]  # no staging directory left behind
