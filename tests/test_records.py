"""Stage records and their nested entries: JSON in, the same JSON out; a damaged entry is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Checkout

from xsplice_build.errors import XspliceError
from xsplice_build.files import dump_json
from xsplice_build.pipeline.integrity import listed_outputs
from xsplice_build.project import Project
from xsplice_build.records import STAGE_RECORDS, ChangedObject, DebugCompile, PatchedRecord, Report, StageRecord

# Every kind of nested entry a patched build record holds: a stacked object (original_file), a new object,
# a debug compile with and without an original, both roles of an applied patch.
PATCHED = {
    "patch": "P", "patch_sha256": "aa", "touched": ["common/a.c"], "recompiled": ["common/a.o", "common/b.o"],
    "changed": [
        {"object": "common/a.o", "original": "common/a.o", "original_file": "work/x/objects/common/a.o.BEFORE",
         "original_sha256": "01", "patched_sha256": "02"},
        {"object": "common/b.o", "original": None, "original_file": None, "original_sha256": None,
         "patched_sha256": "03"},
    ],
    "stack": ["S"], "fixes": ["P"], "action": "apply",
    "applied": [{"path": "patches/S/minixen.patch", "sha256": "04", "role": "stacked-under"},
                {"path": "patches/P/minixen.patch", "sha256": "05", "role": "fix"}],
    "debug": {"common/b.o": {"original": None, "patched": "work/x/debug/common/b.o", "original_sha256": None,
                             "patched_sha256": "06"},
              "common/c.o": {"original": "work/x/debug-orig/c.o", "patched": "work/x/debug/common/c.o",
                             "original_sha256": "07", "patched_sha256": "08"}},
}


def test_a_record_with_every_kind_of_entry_reads_as_classes_and_writes_the_same_bytes(tmp_path: Path) -> None:
    path = tmp_path / PatchedRecord.FILE
    path.write_bytes(dump_json(PATCHED))
    record = PatchedRecord.read(path)
    assert isinstance(record.changed[0], ChangedObject) and record.changed[0].original_file
    assert isinstance(record.debug["common/c.o"], DebugCompile) and record.debug["common/b.o"].original is None
    assert [applied.role for applied in record.applied] == ["stacked-under", "fix"]
    record.write(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_bytes() == path.read_bytes()


@pytest.mark.parametrize(("edit", "where", "missing"), [
    (lambda r: r["changed"][1].pop("patched_sha256"), "changed[1]", "changed object without patched_sha256"),
    (lambda r: r["applied"][0].pop("role"), "applied[0]", "applied patch without role"),
    (lambda r: r["debug"]["common/c.o"].pop("patched"), "debug[common/c.o]", "debug compile without patched"),
    (lambda r: r.__setitem__("changed", {"object": "x"}), "changed", "not a list"),
    (lambda r: r["changed"].__setitem__(0, "common/a.o"), "changed[0]", "changed object without object, original"),
])
def test_a_damaged_entry_is_one_line_naming_the_file_and_the_entry(tmp_path: Path, edit, where: str,
                                                                 missing: str) -> None:
    damaged = json.loads(json.dumps(PATCHED))
    edit(damaged)
    path = tmp_path / PatchedRecord.FILE
    path.write_bytes(dump_json(damaged))
    with pytest.raises(XspliceError) as refused:
        PatchedRecord.read(path)
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"{path} {where}: ") and missing in message
    assert "run the stage again" in message
    # The integrity check treats it as a stage to run again, not as a crash.
    assert listed_outputs(Project(tmp_path), "build-patched", damaged, tmp_path) is None


def test_every_record_of_a_built_pair_round_trips_to_the_same_bytes(built_once: Checkout) -> None:
    found: list[str] = []
    for stage, declared in STAGE_RECORDS.items():
        places = (built_once.work(), built_once.root / "out")
        for path in sorted(path for place in places for path in place.rglob(declared.FILE)):
            record: StageRecord = declared.read(path)
            assert dump_json(record.to_json()) == path.read_bytes(), path
            found.append(stage)
    assert set(found) == set(STAGE_RECORDS)  # every kind of record was seen
    report = Report.read(built_once.out("XSA-131") / Report.FILE)
    assert report.functions and all(function.old_addr.startswith("0x") for function in report.functions)
