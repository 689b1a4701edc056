"""doit task definitions for the stages: what each depends on, what it makes, how it reports.

Up-to-date checks key on content: the baseline definition and bundled sources, the
patch, the toolchain record and the previous stage's record (whose bytes stay the
same when a rebuild gives the same result, which stops the chain there), and the
code of this tool that the stage runs. Never on timestamps alone.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from doit.exceptions import TaskFailed
from doit.tools import config_changed

from . import integrity, stages
from .baseline import Baseline, load_all, supplied_image
from .errors import XspliceError
from .files import read_json
from .patches import pairs
from .project import Project
from .sign import SigningKeys, configured_keys

_PACKAGE = Path(__file__).resolve().parent
# The code each stage runs: a change to it makes the stage's cached results stale.
_STAGE_CODE = {
    "checkout": ["checkout.py", "baseline.py"],
    "build": ["build.py", "baseline.py", "data/xsplice-cc", "elf/reader.py", "elf/notes.py", "layout.py"],
    "build-patched": ["build.py", "baseline.py", "data/xsplice-cc", "elf/reader.py", "elf/notes.py", "layout.py",
                      "debuginfo.py"],
    "diff": ["diff", "elf", "stages.py", "bringup.py"],
    "payload": ["payload.py", "image.py", "elf"],
    "sign": ["sign.py", "stages.py"],
}


def run_stage(stage: str, root: str, **arguments: str) -> TaskFailed | None:
    """A doit python-action: run one stage, turning a user-facing error into a one-line failure."""
    function: Callable[..., Any] = getattr(stages, f"stage_{stage}")
    try:
        function(Project(Path(root)), **arguments)
    except XspliceError as error:
        return TaskFailed(error.message)
    return None


def code_fingerprint(stage: str) -> str:
    digest = hashlib.sha256()
    for entry in _STAGE_CODE[stage]:
        path = _PACKAGE / entry
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for file in files:
            digest.update(file.relative_to(_PACKAGE).as_posix().encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


class Pipeline:
    """Task dictionaries for every stage, over every baseline and every patch variant."""

    def __init__(self, root: Path) -> None:
        self.project = Project(root)
        self.root = str(root)
        self._baselines: list[Baseline] | None = None

    def doit_config(self) -> dict[str, Any]:
        from .reporter import XspliceReporter

        # doit opens its dependency database before it loads any task.
        self.project.work_dir.mkdir(parents=True, exist_ok=True)
        return {"backend": "sqlite3", "dep_file": self._path(self.project.work_dir / ".doit.db"),
                "default_tasks": ["toolchain"], "reporter": XspliceReporter, "verbosity": 0}

    @property
    def baselines(self) -> list[Baseline]:
        if self._baselines is None:
            self.project.work_dir.mkdir(parents=True, exist_ok=True)
            self._baselines = load_all(self.project)
        return self._baselines

    def _action(self, stage: str, **arguments: str) -> list[tuple[Callable[..., Any], list[Any], dict[str, str]]]:
        return [(run_stage, [stage, self.root], arguments)]

    def toolchain(self) -> dict[str, Any]:
        return {"doc": "check gcc, cc1, as and ld against toolchain.lock", "actions": self._action("toolchain"),
                "targets": [self._path(self.project.toolchain_state)], "uptodate": [False]}

    def lock_toolchain(self) -> dict[str, Any]:
        return {"basename": "lock-toolchain", "doc": "rewrite toolchain.lock from this machine (deliberately)",
                "actions": self._action("lock_toolchain"), "uptodate": [False]}

    def dev_keys(self) -> dict[str, Any]:
        keys = configured_keys(self.project.root)
        return {"basename": "dev-keys", "doc": "make the development signing key pair when none is configured",
                "actions": self._action("dev_keys"), "targets": [self._path(keys.key), self._path(keys.certificate)] if
                keys.development else [], "uptodate": [lambda: _keys_present(keys)]}

    def checkout(self) -> Iterator[dict[str, Any]]:
        yield self._doc("checkout", "pristine tree of each baseline at its pinned commit")
        for baseline in self.baselines:
            records = stages.Records(self.project, baseline.name)
            yield self._subtask("checkout", baseline.name, "checkout", baseline.inputs(), [records.checkout],
                                baseline=baseline.name)

    def build_base(self) -> Iterator[dict[str, Any]]:
        yield self._doc("build-base", "build each baseline as shipped: the image and its build-id")
        for baseline in self.baselines:
            records = stages.Records(self.project, baseline.name)
            task = self._subtask("build-base", baseline.name, "build", self._build_inputs(baseline, records.checkout),
                                 [records.build_base], baseline=baseline.name)
            image = supplied_image(baseline.name)
            task["uptodate"] = [config_changed({"code": code_fingerprint("build"), "image": _image_identity(image)}),
                                task["uptodate"][1]]  # the outputs-intact check _subtask made
            yield task

    def build_orig(self) -> Iterator[dict[str, Any]]:
        yield self._doc("build-orig", "build each baseline's original objects, one section per function")
        for baseline in self.baselines:
            records = stages.Records(self.project, baseline.name)
            inputs = self._build_inputs(baseline, records.checkout)
            if baseline.build.split_sections == "base":
                inputs.append(records.build_base)
            yield self._subtask("build-orig", baseline.name, "build", inputs, [records.build_orig],
                                baseline=baseline.name)

    def build_patched(self) -> Iterator[dict[str, Any]]:
        yield self._doc("build-patched", "apply each patch and rebuild what it touches (objects kept as .XSPLICE)")
        for baseline, patch in self._pairs():
            records = stages.Records(self.project, baseline, patch)
            inputs = [records.build_orig, self._patch(baseline, patch), self.project.toolchain_state]
            yield self._subtask("build-patched", f"{baseline}/{patch}", "build-patched", inputs, [records.patched],
                                baseline=baseline, patch=patch)

    def diff(self) -> Iterator[dict[str, Any]]:
        yield self._doc("diff", "find the changed and new functions of each patch and what they need")
        for baseline, patch in self._pairs():
            records = stages.Records(self.project, baseline, patch)
            # The diff reads the base build record too (the image's record layouts): declared, or a parallel
            # nightly may run it before build-base.
            yield self._subtask("diff", f"{baseline}/{patch}", "diff",
                                [records.patched, records.build_orig, records.build_base],
                                [records.diff, records.extract], baseline=baseline, patch=patch)

    def payload(self) -> Iterator[dict[str, Any]]:
        yield self._doc("payload", "emit each relocatable payload with its livepatch metadata")
        for baseline, patch in self._pairs():
            records = stages.Records(self.project, baseline, patch)
            inputs = [records.diff, records.extract, records.build_base]
            yield self._subtask("payload", f"{baseline}/{patch}", "payload", inputs,
                                [records.payload, records.unsigned], baseline=baseline, patch=patch)

    def sign(self) -> Iterator[dict[str, Any]]:
        yield self._doc("sign", "sign each payload and write it with report.json to out/")
        keys = configured_keys(self.project.root)
        for baseline, patch in self._pairs():
            records = stages.Records(self.project, baseline, patch)
            # The report also reads the earlier records (commit, patch hash, base image).
            inputs = [records.payload, records.unsigned, self.project.lock_path, records.checkout,
                      records.build_base, records.patched, records.diff]
            task = self._subtask("sign", f"{baseline}/{patch}", "sign", inputs,
                                 [records.signed, records.report], record=records.report, baseline=baseline,
                                 patch=patch)
            task["task_dep"] = ["dev-keys"]
            # One config_changed per task: doit keeps a single saved value for all of them.
            task["uptodate"] = [config_changed({"code": code_fingerprint("sign"), "key": self._path(keys.key),
                                                "certificate": self._path(keys.certificate)}), _keys_unchanged(keys),
                                task["uptodate"][1]]
            yield task

    def _subtask(self, basename: str, name: str, code: str, inputs: list[Path], targets: list[Path],
                 record: Path | None = None, **arguments: str) -> dict[str, Any]:
        """One stage for one baseline or pair; `record` (default: the first target) lists its outputs' hashes."""
        return {"basename": basename, "name": name, "actions": self._action(basename.replace("-", "_"), **arguments),
                "file_dep": [self._path(p) for p in inputs], "targets": [self._path(p) for p in targets],
                "uptodate": [config_changed(code_fingerprint(code)),
                             _outputs_intact(self.project, basename, record or targets[0], targets)]}

    def _build_inputs(self, baseline: Baseline, checkout_record: Path) -> list[Path]:
        inputs = [checkout_record, self.project.toolchain_state, baseline.definition]
        if baseline.build.config:
            inputs.append(baseline.build.config)
        return inputs

    def _path(self, path: Path) -> str:
        # Relative to the checkout (doit runs tasks from there), so a copied checkout keeps its cache.
        inside = path.resolve().is_relative_to(self.project.root.resolve())
        return os.path.relpath(path, self.project.root) if inside else str(path)

    def _pairs(self) -> list[tuple[str, str]]:
        return pairs(self.project, [b.name for b in self.baselines])

    def _patch(self, baseline: str, patch: str) -> Path:
        return self.project.patches_dir / patch / f"{baseline}.patch"

    @staticmethod
    def _doc(basename: str, doc: str) -> dict[str, Any]:
        return {"basename": basename, "name": None, "doc": doc}


def _image_identity(image: Path | None) -> str:
    if image is None:
        return ""
    stat = image.stat() if image.is_file() else None
    return f"{image}:{stat.st_size}:{stat.st_mtime_ns}" if stat else str(image)


def _keys_present(keys: SigningKeys) -> bool:
    return not keys.development or (keys.key.is_file() and keys.certificate.is_file())


def _certificate_digest(keys: SigningKeys) -> str:
    return hashlib.sha256(keys.certificate.read_bytes()).hexdigest() if keys.certificate.is_file() else ""


def _keys_unchanged(keys: SigningKeys) -> Callable[..., bool]:
    """Re-sign when the certificate changes (a new development pair, a new release key)."""

    def check(task: Any, values: dict[str, Any]) -> bool:
        task.value_savers.append(lambda: {"certificate_sha256": _certificate_digest(keys)})
        digest = _certificate_digest(keys)
        return bool(digest) and values.get("certificate_sha256") == digest

    return check


def _outputs_intact(project: Project, stage: str, record: Path, targets: list[Path]) -> Callable[..., bool]:
    """Up to date only with the targets as this stage last wrote them and every output its record lists intact."""

    def check(task: Any, values: dict[str, Any]) -> bool:
        task.value_savers.append(lambda: {"targets_sha256": integrity.files_digest(targets)})
        if values.get("targets_sha256") != integrity.files_digest(targets):
            return False
        try:
            content = read_json(record, f"{stage} record")
        except XspliceError:
            return False
        return isinstance(content, dict) and integrity.outputs_intact(project, stage, content, record.parent)

    return check
