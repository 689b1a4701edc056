"""The stage records, each declared once: its fields, its file name, the outputs it lists, to and from JSON.

Every stage writes one record last (so an interrupted stage leaves none); the later
stages, the integrity checks, the release, the audit, the cluster and the runtime read
them through these classes, never by string key. `Records` says where each one lives
for a baseline (and patch). A record that lacks a field is damaged: reading it is a
one-line refusal, and the integrity check treats it as not up to date.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from .errors import XspliceError
from .files import read_json, write_json
from .project import Project

R = TypeVar("R", bound="StageRecord")
# A payload's provenance envelope is the payload's name and this (provenance.py).
PROVENANCE_SUFFIX = ".intoto.json"


@dataclass(frozen=True)
class StageRecord:
    """A stage's record: a JSON object with exactly these fields (more are kept out of the way, never read)."""

    FILE: ClassVar[str]
    WHAT: ClassVar[str]

    @classmethod
    def read(cls: type[R], path: Path) -> R:
        content = read_json(path, cls.WHAT)
        return cls.from_json(content, path)

    @classmethod
    def from_json(cls: type[R], content: Any, path: Path | str) -> R:
        names = [item.name for item in dataclasses.fields(cls)]
        missing = [name for name in names if not isinstance(content, dict) or name not in content]
        if missing:
            raise XspliceError(f"{path}: {cls.WHAT} without {', '.join(missing)}: it is damaged or from another "
                               "version; run the stage again (doit forget, then build)")
        return cls(**{name: content[name] for name in names})

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, path: Path) -> None:
        write_json(path, self.to_json())

    def outputs(self, project: Project, record_dir: Path) -> dict[Path, str]:
        """The files this stage made, with the sha256 each must still have for the record to be trusted."""
        return {}


@dataclass(frozen=True)
class CheckoutRecord(StageRecord):
    FILE: ClassVar[str] = "checkout.json"
    WHAT: ClassVar[str] = "checkout record"
    baseline: str
    commit: str
    tree: str  # relative to the checkout
    source: str


@dataclass(frozen=True)
class BaseRecord(StageRecord):
    FILE: ClassVar[str] = "base.json"
    WHAT: ClassVar[str] = "base build record"
    tree: str
    image: str  # relative to the checkout when inside it, else absolute (a supplied --image)
    image_sha256: str
    build_id: str
    objects: dict[str, str]  # object path in the tree -> sha256
    layout: dict[str, Any]

    def outputs(self, project: Project, record_dir: Path) -> dict[Path, str]:
        tree = project.root / self.tree
        return {**{tree / name: digest for name, digest in self.objects.items()},
                project.root / self.image: self.image_sha256}


@dataclass(frozen=True)
class OrigRecord(StageRecord):
    FILE: ClassVar[str] = "orig.json"
    WHAT: ClassVar[str] = "original build record"
    tree: str
    objects: dict[str, str]
    built_by: str  # build-orig, or build-base when the shipped build already splits sections

    def outputs(self, project: Project, record_dir: Path) -> dict[Path, str]:
        tree = project.root / self.tree
        return {tree / name: digest for name, digest in self.objects.items()}


@dataclass(frozen=True)
class PatchedRecord(StageRecord):
    FILE: ClassVar[str] = "patched.json"
    WHAT: ClassVar[str] = "patched build record"
    patch: str
    patch_sha256: str
    touched: list[str]
    recompiled: list[str]
    # object, original (or None: new), original_file (a stacked payload's: the object as the stack left it,
    # or None), original_sha256, patched_sha256
    changed: list[dict[str, Any]]
    stack: list[str]  # the advisories built into the tree first (patches.BuildSpec)
    fixes: list[str]
    action: str  # apply, or replace (a cumulative payload)
    applied: list[dict[str, Any]]  # every patch applied, in order: path, sha256, role (stacked-under or fix)
    # object -> original (path relative to the checkout, or None), patched, original_sha256, patched_sha256:
    # the debug compiles the struct-layout rule reads (debuginfo.py); objects with their own DWARF are not listed
    debug: dict[str, dict[str, str | None]]

    def outputs(self, project: Project, record_dir: Path) -> dict[Path, str]:
        listed = {kept_object(record_dir, change["object"]): change["patched_sha256"] for change in self.changed}
        listed.update({project.root / change["original_file"]: change["original_sha256"]
                       for change in self.changed if change.get("original_file")})
        listed.update({project.root / entry[side]: entry[f"{side}_sha256"] for entry in self.debug.values()
                       for side in ("original", "patched") if entry[side]})
        return listed


def kept_object(patch_dir: Path, name: str) -> Path:
    """Where build-patched keeps a changed object for the diff."""
    return patch_dir / "objects" / f"{name}.XSPLICE"


@dataclass(frozen=True)
class DiffRecord(StageRecord):
    FILE: ClassVar[str] = "diff.json"
    WHAT: ClassVar[str] = "diff record"
    EXTRACT: ClassVar[str] = "extract.o"
    functions: list[dict[str, Any]]  # diff.extract.PatchedFunction fields
    objects: list[dict[str, Any]]  # diff.explain.explain_record of each object
    extract_sha256: str
    defined: list[dict[str, Any]]  # diff.extract.DefinedSymbol fields: how a payload above finds them

    def outputs(self, project: Project, record_dir: Path) -> dict[Path, str]:
        return {record_dir / self.EXTRACT: self.extract_sha256}


@dataclass(frozen=True)
class PayloadRecord(StageRecord):
    FILE: ClassVar[str] = "payload.json"
    WHAT: ClassVar[str] = "payload record"
    build_id: str
    functions: list[dict[str, Any]]
    unsigned: str  # file name beside the record
    sha256: str
    depends_build_id: str  # in .livepatch.depends: the image's, or the payload's below
    stack: list[str]
    action: str

    def outputs(self, project: Project, record_dir: Path) -> dict[Path, str]:
        return {record_dir / self.unsigned: self.sha256}


@dataclass(frozen=True)
class Report(StageRecord):
    """out/BASELINE/PATCH/report.json: what the signed payload replaces and what it was built from."""

    FILE: ClassVar[str] = "report.json"
    WHAT: ClassVar[str] = "report"
    patch: str
    baseline: str
    commit: str
    source: str
    patch_sha256: str
    base_build_id: str
    base_image: str
    base_image_sha256: str
    toolchain_lock_sha256: str
    functions: list[dict[str, Any]]
    new_functions: list[str]
    objects_changed: list[str]
    warnings: list[str]
    ignored: list[str]
    payload_build_id: str
    unsigned_payload_sha256: str
    payload_sha256: str
    payload: str
    signer_certificate: str
    depends_build_id: str
    stack: list[str]
    fixes: list[str]
    action: str
    applied: list[dict[str, Any]]
    provenance: str  # the DSSE envelope beside the payload (provenance.py)
    provenance_sha256: str
    xsplice_build_version: str = field(default="")

    def outputs(self, project: Project, record_dir: Path) -> dict[Path, str]:
        return {record_dir / self.payload: self.payload_sha256, record_dir / self.provenance: self.provenance_sha256}


# The record each stage (doit task basename) writes.
STAGE_RECORDS: dict[str, type[StageRecord]] = {
    "checkout": CheckoutRecord, "build-base": BaseRecord, "build-orig": OrigRecord,
    "build-patched": PatchedRecord, "diff": DiffRecord, "payload": PayloadRecord, "sign": Report,
}


class Records:
    """Where each stage keeps its record for one baseline (and patch)."""

    def __init__(self, project: Project, baseline: str, patch: str | None = None) -> None:
        self.project = project
        self.base = project.baseline_work(baseline)
        self.checkout = self.base / CheckoutRecord.FILE
        self.build_base = self.base / BaseRecord.FILE
        self.build_orig = self.base / OrigRecord.FILE
        self.bin = self.base / "bin"
        if patch is not None:
            self.patch_dir = project.patch_work(baseline, patch)
            self.patched = self.patch_dir / PatchedRecord.FILE
            self.diff = self.patch_dir / DiffRecord.FILE
            # Every decision of the diff, also when it refuses: where an error line sends the user.
            self.explain_text = self.patch_dir / "diff.explain.txt"
            self.explain_json = self.patch_dir / "diff.explain.json"
            self.extract = self.patch_dir / DiffRecord.EXTRACT
            self.payload = self.patch_dir / PayloadRecord.FILE
            self.unsigned = self.patch_dir / f"{patch}.livepatch.unsigned"
            self.out_dir = project.patch_out(baseline, patch)
            self.signed = self.out_dir / f"{patch}.livepatch"
            self.provenance = self.signed.with_name(self.signed.name + PROVENANCE_SUFFIX)
            self.report = self.out_dir / Report.FILE
            # Real-Xen baselines: what the real hypervisor said to the signed payload (stages.stage_prove).
            self.proof = self.patch_dir / "proof.json"

    def signing_inputs(self) -> list[Path]:
        """The records the sign stage reads besides the unsigned payload (what a cluster worker returns)."""
        return [self.checkout, self.build_base, self.patched, self.diff, self.payload]
