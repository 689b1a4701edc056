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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from doit.exceptions import TaskFailed
from doit.tools import config_changed

from ..code_identity import cached_identity
from ..errors import XspliceError
from ..keys import SigningKeys, configured_keys
from ..patches import ADVISORY_FILE, build_spec, cumulative_pairs, pairs, requested, spec_files
from ..project import Project
from ..records import Records
from ..stages import sandbox, toolchain
from ..stages.provenance import code_identity
from ..target.baseline import Baseline, load_all
from ..vm.probes import probe_file
from ..vm.vm_runtime import has_runtime, runtime_path
from . import integrity


@dataclass(frozen=True)
class Plan:
    """What `doit build-patch` asks of the tasks dodo.py makes after it (values, never the environment).

    `pairs`: plan only these pairs and their baseline, the tasks it runs (planning every pair of
    every baseline was a third of a no-op build's time). `images`: the image the user runs for a
    baseline (--image), which build-base is given and trusts only if the baseline rebuilds to it.
    `cumulative`: cumulative payloads ("XSA-A+XSA-B") to plan besides every pair and chain (an audit
    rebuilds those a release holds).
    """

    pairs: tuple[tuple[str, str], ...] = ()
    images: tuple[tuple[str, Path], ...] = ()
    cumulative: tuple[str, ...] = ()


_PLAN = [Plan()]  # set by the command before doit loads dodo.py


def plan_only(baseline: str, patches: list[str], image: Path | None = None) -> None:
    _PLAN[0] = Plan(pairs=tuple((baseline, patch) for patch in patches),
                    images=((baseline, image),) if image is not None else ())


def plan_cumulative(names: list[str]) -> None:
    _PLAN[0] = Plan(cumulative=tuple(names))


def run_stage(stage: str, root: str, targets: list[str], record: str = "", certificate: str = "",
              **arguments: str) -> TaskFailed | dict[str, Any]:
    """A doit python-action: run one stage, turning a user-facing error into a one-line failure.

    On success it returns the values doit saves for the next run's up-to-date checks (the digest of the
    targets as written, the certificate signed with) and the warnings the stage returned, which the
    reporter shows.
    """
    from ..stages import steps as stages  # imported when a stage runs: a no-op build never needs the stages' code

    function: Callable[..., Any] = getattr(stages, f"stage_{stage}")
    project = Project(Path(root))
    try:
        warnings = function(project, **arguments)
    except XspliceError as error:
        return TaskFailed(error.message)
    paths = [project.root / t for t in targets]
    values: dict[str, Any] = integrity.stage_values(project, stage.replace("_", "-"), project.root / record, paths) \
        if record else {"targets_sha256": integrity.files_digest(paths)}
    if stage == "toolchain":
        values["toolchain_files"] = toolchain.files_state(project.lock_path, project.toolchain_state)
    if certificate:
        values["certificate_sha256"] = _file_digest(Path(certificate))
    if warnings:
        values["warnings"] = [str(warning) for warning in warnings]
    return values


# The stages whose work runs in the build sandbox (stages/steps.py hands it to sandbox.run_stage).
SANDBOXED_STAGES = frozenset({"build_base", "build_orig", "build_patched", "diff"})


class Pipeline:
    """Task dictionaries for every stage, over every baseline and every patch variant."""

    def __init__(self, root: Path) -> None:
        self.project = Project(root)
        self.root = str(root)
        self._root_prefix = os.path.join(self.root, "")
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
            wanted = {baseline for baseline, _ in _PLAN[0].pairs}
            self._baselines = [b for b in load_all(self.project) if not wanted or b.name in wanted]
        return self._baselines

    def _action(self, stage: str, targets: list[str] | None = None,
                **arguments: str) -> list[tuple[Callable[..., Any], list[Any], dict[str, Any]]]:
        return [(run_stage, [stage, self.root, targets or []], arguments)]

    def toolchain(self) -> dict[str, Any]:
        return {"doc": "check gcc, cc1, as and ld against toolchain.lock", "actions": self._action("toolchain"),
                "targets": [self._path(self.project.toolchain_state)], "uptodate": [_toolchain_unchanged(self.project)]}

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
            records = Records(self.project, baseline.name)
            yield self._subtask("checkout", baseline.name, baseline.inputs(), [records.checkout],
                                baseline=baseline.name)

    def build_base(self) -> Iterator[dict[str, Any]]:
        yield self._doc("build-base", "build each baseline as shipped: the image and its build-id")
        for baseline in self.baselines:
            records = Records(self.project, baseline.name)
            # A supplied image (--image) is an input too: another file means another record.
            image = dict(_PLAN[0].images).get(baseline.name)
            supplied = {"image": str(image)} if image is not None else {}
            yield self._subtask("build-base", baseline.name, self._build_inputs(baseline, records.checkout),
                                [records.build_base], config={"image": _image_identity(image)},
                                baseline=baseline.name, **supplied)

    def build_orig(self) -> Iterator[dict[str, Any]]:
        yield self._doc("build-orig", "build each baseline's original objects, one section per function")
        for baseline in self.baselines:
            records = Records(self.project, baseline.name)
            inputs = self._build_inputs(baseline, records.checkout)
            if baseline.build.split_sections == "base":
                inputs.append(records.build_base)
            yield self._subtask("build-orig", baseline.name, inputs, [records.build_orig],
                                baseline=baseline.name)

    def build_patched(self) -> Iterator[dict[str, Any]]:
        yield self._doc("build-patched", "apply each patch and rebuild what it touches (objects kept as .XSPLICE)")
        for baseline, patch in self._pairs():
            records = Records(self.project, baseline, patch)
            inputs = [records.build_orig, *self._patches(baseline, patch), self.project.toolchain_state]
            yield self._subtask("build-patched", f"{baseline}/{patch}", inputs, [records.patched],
                                baseline=baseline, patch=patch)

    def diff(self) -> Iterator[dict[str, Any]]:
        yield self._doc("diff", "find the changed and new functions of each patch and what they need")
        for baseline, patch in self._pairs():
            records = Records(self.project, baseline, patch)
            # The diff reads the base build record too (the image's record layouts): declared, or a parallel
            # nightly may run it before build-base.
            yield self._subtask("diff", f"{baseline}/{patch}",
                                [records.patched, records.build_orig, records.build_base],
                                [records.diff, records.extract], baseline=baseline, patch=patch)

    def payload(self) -> Iterator[dict[str, Any]]:
        yield self._doc("payload", "emit each relocatable payload with its livepatch metadata")
        for baseline, patch in self._pairs():
            records = Records(self.project, baseline, patch)
            inputs = [records.diff, records.extract, records.build_base]
            for earlier in build_spec(self.project, patch, baseline).stack:  # built first: doit orders by file_dep
                under = Records(self.project, baseline, earlier)
                inputs += [under.payload, under.diff]
            yield self._subtask("payload", f"{baseline}/{patch}", inputs,
                                [records.payload, records.unsigned], baseline=baseline, patch=patch)

    def sign(self) -> Iterator[dict[str, Any]]:
        yield self._doc("sign", "sign each payload and write it with report.json to out/")
        keys = configured_keys(self.project.root)
        for baseline, patch in self._pairs():
            records = Records(self.project, baseline, patch)
            # The report also reads the earlier records (commit, patch hash, base image).
            inputs = [records.payload, records.unsigned, self.project.lock_path, records.checkout,
                      records.build_base, records.patched, records.diff]
            # The statement names this tool's code identity: any change to the code re-signs.
            config = {"key": self._path(keys.key), "certificate": self._path(keys.certificate),
                      "identity": code_identity()}
            task = self._subtask("sign", f"{baseline}/{patch}", inputs,
                                 [records.signed, records.provenance, records.report],
                                 record=records.report, config=config, checks=[_keys_unchanged(keys)],
                                 certificate=str(keys.certificate), baseline=baseline, patch=patch)
            yield {**task, "task_dep": ["dev-keys"]}

    def prove(self) -> Iterator[dict[str, Any]]:
        yield self._doc("prove", "load, apply and revert each real-Xen payload on the real hypervisor, in a VM")
        for baseline, patch in self._pairs():
            if not has_runtime(self.project, baseline):
                continue
            records = Records(self.project, baseline, patch)
            probes = probe_file(self.project, patch, baseline)
            below = [Records(self.project, baseline, earlier).signed
                     for earlier in build_spec(self.project, patch, baseline).stack]  # applied first
            inputs = [records.signed, *below, runtime_path(self.project, baseline),
                      *([probes] if probes.is_file() else [])]
            task = self._subtask("prove", f"{baseline}/{patch}", inputs, [records.proof], baseline=baseline,
                                 patch=patch)
            # One VM serves every proof of a run (booted by the first). No doit teardown stops it: with -n N a
            # worker runs its tasks' teardowns when it runs out of work, stopping the VM under another
            # worker's proof; the nightly stops it after the run (release_commands), a bare run leaves it up.
            yield task

    def _subtask(self, basename: str, name: str, inputs: list[Path], targets: list[Path],
                 record: Path | None = None, config: dict[str, str] | None = None,
                 checks: list[Callable[..., bool]] | None = None, **arguments: str) -> dict[str, Any]:
        """One stage for one baseline or pair; `record` (default: the first target) lists its outputs' hashes.

        Up to date needs the stage's code (code_identity) and `config` unchanged, every check true and the
        outputs intact. One config_changed per task: doit keeps a single saved value for all of them.
        """
        stage = basename.replace("-", "_")
        if stage in SANDBOXED_STAGES:  # built with or without the sandbox: a change of mode rebuilds
            config = {**(config or {}), "sandbox": sandbox.mode()}
        paths = [self._path(p) for p in targets]
        code = cached_identity(stage, self.project.work_dir / ".code-identity.json")
        return {"basename": basename, "name": name,
                "actions": self._action(stage, paths, record=self._path(record or targets[0]), **arguments),
                "file_dep": [self._path(p) for p in inputs], "targets": paths,
                # `doit clean`: removes the record and outputs listed as targets, so the stage runs again
                "clean": True,
                "uptodate": [config_changed({"code": code, **(config or {})}), *(checks or []),
                             _outputs_intact(self.project, basename, record or targets[0], targets)]}

    def _build_inputs(self, baseline: Baseline, checkout_record: Path) -> list[Path]:
        inputs = [checkout_record, self.project.toolchain_state, baseline.definition]
        if baseline.build.config:
            inputs.append(baseline.build.config)
        return inputs

    def _path(self, path: Path) -> str:
        # Relative to the checkout (doit runs tasks from there), so a copied checkout keeps its cache.
        # Paths made from the project root are inside by their spelling; only others need resolving.
        if str(path).startswith(self._root_prefix) and ".." not in path.parts:
            return str(path)[len(self._root_prefix):]
        inside = path.resolve().is_relative_to(self.project.root.resolve())
        return os.path.relpath(path, self.project.root) if inside else str(path)

    def _pairs(self) -> list[tuple[str, str]]:
        if _PLAN[0].pairs:
            return list(_PLAN[0].pairs)
        names = [b.name for b in self.baselines]
        found = pairs(self.project, names) + cumulative_pairs(self.project, names)
        return found + [pair for pair in requested(self.project, names, list(_PLAN[0].cumulative))
                        if pair not in found]

    def _patches(self, baseline: str, patch: str) -> list[Path]:
        spec = build_spec(self.project, patch, baseline)
        stack, fixes = spec_files(self.project, spec, baseline)
        advisories = [self.project.patches_dir / name / ADVISORY_FILE for name in (*spec.stack, *spec.fixes)]
        return [*stack, *fixes, *(path for path in advisories if path.is_file())]

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


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


def _keys_unchanged(keys: SigningKeys) -> Callable[..., bool]:
    """Re-sign when the certificate changes (a new development pair, a new release key)."""

    def check(task: Any, values: dict[str, Any]) -> bool:  # doit passes both by these names
        digest = _file_digest(keys.certificate)
        return bool(digest) and values.get("certificate_sha256") == digest

    return check


def _toolchain_unchanged(project: Project) -> Callable[..., bool]:
    """Probe the toolchain again only when the lock, the record or a checked binary changed since the last probe."""

    def check(task: Any, values: dict[str, Any]) -> bool:  # doit passes both by these names
        now = toolchain.files_state(project.lock_path, project.toolchain_state)
        return now is not None and values.get("toolchain_files") == now

    return check


def _outputs_intact(project: Project, stage: str, record: Path, targets: list[Path]) -> Callable[..., bool]:
    """Up to date only with the targets as this stage last wrote them and every output its record lists intact."""

    def check(task: Any, values: dict[str, Any]) -> bool:  # doit passes both by these names
        # run_stage saved what integrity.stage_values took right after the stage ran.
        return integrity.stage_intact(project, stage, record, targets, values)

    return check
