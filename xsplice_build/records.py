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
from typing import Any, ClassVar, TypeVar, get_args, get_origin, get_type_hints

from .errors import XspliceError
from .files import read_json, write_json
from .project import Project

E = TypeVar("E", bound="Entry")
R = TypeVar("R", bound="StageRecord")
# A payload's provenance envelope is the payload's name and this (provenance.py).
PROVENANCE_SUFFIX = ".intoto.json"
_DAMAGED = "it is damaged or from another version; run the stage again (doit forget, then build)"


@dataclass(frozen=True)
class Entry:
    """A JSON object with exactly these fields: a record, or an entry nested in one (read by attribute, never by key).

    A field typed as an Entry, a list of them or a dict of them is read as such, so a damaged entry
    deep in a record is refused in one line that says where it is, like a damaged record.
    """

    WHAT: ClassVar[str]

    @classmethod
    def from_json(cls: type[E], content: Any, path: Path | str) -> E:
        names = [item.name for item in dataclasses.fields(cls)]
        missing = [name for name in names if not isinstance(content, dict) or name not in content]
        if missing:
            raise XspliceError(f"{path}: {cls.WHAT} without {', '.join(missing)}: {_DAMAGED}")
        hints = _hints(cls)
        return cls(**{name: _entries(hints[name], content[name], f"{path} {name}") for name in names})

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _hints(cls: type) -> dict[str, Any]:
    cached = _HINTS.get(cls)
    if cached is None:
        cached = _HINTS[cls] = get_type_hints(cls)
    return cached


_HINTS: dict[type, dict[str, Any]] = {}


def _entries(hint: Any, value: Any, where: str) -> Any:
    """`value` with the entries `hint` declares read as their classes; anything else as it is."""
    args = get_args(hint)
    if get_origin(hint) is list and args and _is_entry(args[0]):
        if not isinstance(value, list):
            raise XspliceError(f"{where}: not a list: {_DAMAGED}")
        return [args[0].from_json(item, f"{where}[{index}]") for index, item in enumerate(value)]
    if get_origin(hint) is dict and len(args) == 2 and _is_entry(args[1]):
        if not isinstance(value, dict):
            raise XspliceError(f"{where}: not an object: {_DAMAGED}")
        return {key: args[1].from_json(item, f"{where}[{key}]") for key, item in value.items()}
    return value


def _is_entry(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, Entry)


@dataclass(frozen=True)
class StageRecord(Entry):
    """A stage's record: a JSON file holding exactly these fields (more are kept out of the way, never read)."""

    FILE: ClassVar[str]

    @classmethod
    def read(cls: type[R], path: Path) -> R:
        content = read_json(path, cls.WHAT)
        return cls.from_json(content, path)

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
class ChangedObject(Entry):
    """An object the patch changed: build-patched keeps it for the diff (kept_object), and what it is diffed against."""

    WHAT: ClassVar[str] = "changed object"
    object: str  # path in the tree
    original: str | None  # its name in the original tree, or None: a new object
    original_file: str | None  # a stacked payload's: the object as the stack left it (relative to the checkout)
    original_sha256: str | None
    patched_sha256: str


@dataclass(frozen=True)
class AppliedPatch(Entry):
    """A patch build-patched applied, in order."""

    WHAT: ClassVar[str] = "applied patch"
    path: str  # relative to the checkout
    sha256: str
    role: str  # stacked-under or fix


@dataclass(frozen=True)
class DebugCompile(Entry):
    """A changed unit compiled again with -g for the struct-layout rule (debuginfo.py); paths from the checkout."""

    WHAT: ClassVar[str] = "debug compile"
    original: str | None  # None: a new object
    patched: str
    original_sha256: str | None
    patched_sha256: str | None


@dataclass(frozen=True)
class PatchedRecord(StageRecord):
    FILE: ClassVar[str] = "patched.json"
    WHAT: ClassVar[str] = "patched build record"
    patch: str
    patch_sha256: str
    touched: list[str]
    recompiled: list[str]
    changed: list[ChangedObject]
    stack: list[str]  # the advisories built into the tree first (patches.BuildSpec)
    fixes: list[str]
    action: str  # apply, or replace (a cumulative payload)
    applied: list[AppliedPatch]  # every patch applied, in order
    # object -> its debug compiles; objects with their own DWARF are not listed
    debug: dict[str, DebugCompile]

    def outputs(self, project: Project, record_dir: Path) -> dict[Path, str]:
        # A kept original (a stack's object, a debug compile) has its digest recorded beside it.
        listed = {kept_object(record_dir, change.object): change.patched_sha256 for change in self.changed}
        listed.update({project.root / change.original_file: str(change.original_sha256)
                       for change in self.changed if change.original_file})
        for entry in self.debug.values():
            if entry.original:
                listed[project.root / entry.original] = str(entry.original_sha256)
            listed[project.root / entry.patched] = str(entry.patched_sha256)
        return listed


def kept_object(patch_dir: Path, name: str) -> Path:
    """Where build-patched keeps a changed object for the diff."""
    return patch_dir / "objects" / f"{name}.XSPLICE"


@dataclass(frozen=True)
class PatchedFunction(Entry):
    """One entry of .livepatch.funcs, as the diff finds it: which base image function is replaced by which code."""

    WHAT: ClassVar[str] = "patched function"
    object: str
    name: str  # the base image's name for the old function
    symbol: str  # the name of the new code's symbol in the extract
    symbol_index: int  # its index in the extract's symbol table (names of statics can repeat)
    old_size: int  # in the original object (the payload stage checks it against the base image)
    new_size: int


@dataclass(frozen=True)
class DefinedSymbol(Entry):
    """A named symbol the payload defines: how the original objects name it, and how the payload does.

    Xen's loader makes every named payload symbol that is not a replacement function a
    symbol later payloads resolve by its payload name; a payload stacked on this one
    finds it in its own objects under `xen_name` ("file#name" for a static).
    """

    WHAT: ClassVar[str] = "defined symbol"
    xen_name: str
    name: str
    size: int
    function: bool


@dataclass(frozen=True)
class ExplainedObject(Entry):
    """Every decision of the diff for one object pair (diff.explain.explain_record, plus the bring-up warnings)."""

    WHAT: ClassVar[str] = "explained object"
    object: str
    correlated: list[dict[str, Any]]
    uncorrelated: list[str]
    removed: list[Any]
    not_diffed: list[str]
    changed: list[dict[str, Any]]
    changed_functions: list[str]
    new_functions: list[str]
    included: list[dict[str, Any]]
    special_entries: list[Any]
    base_references: list[str]
    ignored: list[str]
    warnings: list[str]
    refusals: list[str]
    types: dict[str, Any] | None
    bring_up: list[str]  # patched functions only CPU bring-up runs (target.bringup)


@dataclass(frozen=True)
class DiffRecord(StageRecord):
    FILE: ClassVar[str] = "diff.json"
    WHAT: ClassVar[str] = "diff record"
    EXTRACT: ClassVar[str] = "extract.o"
    functions: list[PatchedFunction]
    objects: list[ExplainedObject]
    extract_sha256: str
    defined: list[DefinedSymbol]  # how a payload above finds them

    def outputs(self, project: Project, record_dir: Path) -> dict[Path, str]:
        return {record_dir / self.EXTRACT: self.extract_sha256}


@dataclass(frozen=True)
class ReplacedFunction(Entry):
    """A function a payload replaces: its name in the base image, the object it comes from, old and new size."""

    name: str
    object: str
    old_size: int
    new_size: int


@dataclass(frozen=True)
class ReportFunction(ReplacedFunction):
    """A replaced function as report.json (a stable interface) shows it."""

    WHAT: ClassVar[str] = "replaced function"
    old_addr: str  # hexadecimal, 0x0 for a function an earlier payload added


@dataclass(frozen=True)
class PayloadFunction(ReplacedFunction):
    """One struct livepatch_func of the payload: the old function the loader finds in the base image (or below)."""

    WHAT: ClassVar[str] = "payload function"
    old_addr: int  # 0: a function an earlier payload added (the loader resolves it by name)

    def reported(self) -> ReportFunction:
        return ReportFunction(name=self.name, object=self.object, old_addr=f"{self.old_addr:#x}",
                              old_size=self.old_size, new_size=self.new_size)


@dataclass(frozen=True)
class PayloadRecord(StageRecord):
    FILE: ClassVar[str] = "payload.json"
    WHAT: ClassVar[str] = "payload record"
    build_id: str
    functions: list[PayloadFunction]
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
    functions: list[ReportFunction]
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
    applied: list[AppliedPatch]
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
