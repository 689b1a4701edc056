"""The pipeline's stages as functions of (project, baseline[, patch]): read records, write records.

Each stage reads the JSON records of the stages before it, does its work in its own
directory under work/, and writes its record last, so an interrupted stage leaves
no record and runs again. dodo.py wires these into doit tasks; nothing here knows
about doit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .. import __version__, files
from ..errors import BuildError, PayloadRejected, XspliceError
from ..files import relative, sha256_bytes, sha256_file, write_atomic, write_json
from ..patches import BuildSpec, build_spec
from ..project import Project
from ..records import BaseRecord, CheckoutRecord, DiffRecord, OrigRecord, PatchedRecord, PayloadRecord, Records, Report
from ..target.baseline import Baseline, load_baseline
from . import toolchain
from .sandbox import Part, owned_file, run_stage

# Each stage imports what only it needs where it runs (a warm build-patch starts one process that runs
# the pair's four stages: none of them should load the checkout's git, the base build or the others' code).


def stage_toolchain(project: Project) -> None:
    tools = toolchain.check(project.lock_path)
    write_json(project.toolchain_state, toolchain.state(tools, project.lock_path))


def stage_lock_toolchain(project: Project) -> None:
    toolchain.write_lock(project.lock_path, toolchain.probe())


def stage_dev_keys(project: Project) -> None:
    from .sign import configured_keys, make_development_keys

    keys = configured_keys(project.root)
    if keys.development and not (keys.key.is_file() and keys.certificate.is_file()):
        make_development_keys(keys)


def stage_checkout(project: Project, baseline: str) -> None:
    from .checkout import checkout

    result = checkout(project, load_baseline(project, baseline))
    CheckoutRecord(**asdict(result)).write(Records(project, baseline).checkout)


def stage_build_base(project: Project, baseline: str, image: str = "") -> None:
    """The baseline built as shipped; `image`: the one the user runs (--image), used once it proves the same."""
    from ..elf.notes import image_build_id
    from ..elf.reader import read_elf_file
    from . import sandboxed_base
    from .build import check_expected_build_id, compiler_link
    from .sandboxed_build import recorded_tools

    definition = load_baseline(project, baseline)
    records = Records(project, baseline)
    compiler_link(records.bin, definition, recorded_tools(project))  # made here: bin/ is read-only in the sandbox
    built = run_stage(project, sandboxed_base.build_base, {"baseline": baseline}, [records.base / "base"])
    tree = records.base / "base" / "tree"
    rebuilt = owned_file(tree / definition.build.image, tree, "image")
    build_id = image_build_id(read_elf_file(rebuilt)).hex()
    check_expected_build_id(definition, build_id)
    used = _trusted_image(definition, rebuilt, build_id, Path(image) if image else None)
    BaseRecord(
        tree=relative(tree, project.root),
        image=relative(used, project.root) if used.resolve().is_relative_to(project.root.resolve())
        else str(used.resolve()),
        image_sha256=sha256_file(used),
        build_id=build_id,
        objects=built["objects"],
        layout=built["layout"],
    ).write(records.build_base)


def _trusted_image(definition: Baseline, rebuilt: Path, build_id: str, supplied: Path | None) -> Path:
    """The image payloads depend on: the user's own xen-syms, once the baseline rebuilds to its build-id."""
    from ..elf.notes import image_build_id
    from ..elf.reader import read_elf_file

    if supplied is None:
        return rebuilt
    theirs = image_build_id(read_elf_file(supplied)).hex()
    if theirs != build_id:
        raise BuildError(f"{supplied}: build-id {theirs}, but baseline {definition.name} rebuilds to {build_id}: "
                         "the image was not built from this source, configuration and toolchain, so a payload "
                         "built here would not match the code it runs")
    return supplied


def stage_build_orig(project: Project, baseline: str) -> None:
    from . import sandboxed_build
    from .build import compiler_link
    from .sandboxed_build import recorded_tools

    definition = load_baseline(project, baseline)
    records = Records(project, baseline)
    if definition.build.split_sections == "base":
        base = BaseRecord.read(records.build_base)
        OrigRecord(tree=base.tree, objects=base.objects, built_by="build-base").write(records.build_orig)
        return
    compiler_link(records.bin, definition, recorded_tools(project))  # bin/: see stage_build_base
    objects = run_stage(project, sandboxed_build.build_orig, {"baseline": baseline}, [records.base / "orig"])
    OrigRecord(tree=relative(records.base / "orig" / "tree", project.root), objects=objects,
               built_by="build-orig").write(records.build_orig)


def stage_build_patched(project: Project, baseline: str, patch: str) -> None:
    from . import sandboxed_build
    from .build import compiler_link
    from .sandboxed_build import recorded_tools

    records = Records(project, baseline, patch)
    files.remove_temporaries(records.patch_dir)  # the stages of one pair run one after another
    compiler_link(records.bin, load_baseline(project, baseline), recorded_tools(project))  # see stage_build_base
    # The diff comes next: its sandbox is this one, kept (sandbox.py). Unless the base record is not there yet
    # (a parallel nightly), which the diff reads.
    diff = _diff_part(project, baseline, patch) if records.build_base.is_file() else None
    # The kept patched trees (build.patched_tree) are written too. While the build runs, this process loads
    # the later stages' code and checks the key (the thread is joined: no two threads import after this).
    built = run_stage(project, sandboxed_build.build_patched, {"baseline": baseline, "patch": patch},
                      [records.patch_dir, records.base / "patched"], then=diff,
                      meanwhile=lambda: _warm_later_stages(project))
    patched = PatchedRecord.from_json(built, "the sandboxed build-patched")
    patched.write(records.patched)
    _fill_reuse_index(project, baseline, records, patched)


def _fill_reuse_index(project: Project, baseline: str, records: Records, patched: PatchedRecord) -> None:
    """Index the original units this build could not reuse for want of an entry, and compile the original
    debug objects it compiled for itself, for the next builds (sandboxed_reuse.py: computed here, outside
    the patch's build, in a sandbox that writes only the index)."""
    from . import sandboxed_reuse
    from .build import reuse_index_dir

    original = project.root / OrigRecord.read(records.build_orig).tree
    index = reuse_index_dir(original)
    units = sandboxed_reuse.wanted_units(records.patch_dir / "reuse-wanted", original)
    debug = [name for name, pair in patched.debug.items()
             if pair.original and not (project.root / pair.original).resolve().is_relative_to(index.resolve())]
    if units or debug:
        run_stage(project, sandboxed_reuse.fill_index,
                  {"baseline": baseline, "units": "\n".join(units), "debug": "\n".join(debug)}, [index])


# What the stages after build-patched load, by name: loaded while the sandboxed build runs, where this process
# only waits. By name because the build's result does not depend on that code (its identity stays the build's).
_LATER_MODULES = tuple(f"{__package__}.{name}"
                       for name in ("sandboxed_diff", "payload", "keyscan", "provenance", "sign"))


def _warm_later_stages(project: Project) -> None:
    """Load the later stages' code and check the signing key (RSA key checks take a tenth of a second)."""
    for name in _LATER_MODULES:
        importlib.import_module(name)
    sign_module = importlib.import_module(f"{__package__}.sign")
    with contextlib.suppress(XspliceError):  # the sign stage says it, if it runs
        sign_module.load_keys(sign_module.configured_keys(project.root))


def _diff_part(project: Project, baseline: str, patch: str) -> Part:
    """The diff's sandboxed part, what it writes and what it reads outside the checkout: the bring-up check
    reads the base image, which may be one the user supplied. Named here (not by its function) for
    build-patched, which keeps its sandbox for it."""
    records = Records(project, baseline, patch)
    image = project.root / BaseRecord.read(records.build_base).image
    return Part(f"{__package__}.sandboxed_diff:diff_objects", {"baseline": baseline, "patch": patch},
                (records.patch_dir,), (image,))


def stage_diff(project: Project, baseline: str, patch: str) -> None:
    from . import sandboxed_diff

    records = Records(project, baseline, patch)
    files.remove_temporaries(records.patch_dir)  # the stages of one pair run one after another
    part = _diff_part(project, baseline, patch)
    found = run_stage(project, sandboxed_diff.diff_objects, part.arguments, list(part.writable), part.files)
    owned_file(records.extract, records.patch_dir, "extracted code")  # the payload stage reads it unsandboxed
    DiffRecord.from_json(found, "the sandboxed diff").write(records.diff)


def stage_payload(project: Project, baseline: str, patch: str) -> None:
    from ..diff.profile import profile_named
    from ..target.image import BaseImage
    from ..target.layout import func_layout
    from .payload import make_payload

    definition = load_baseline(project, baseline)
    records = Records(project, baseline, patch)
    files.remove_temporaries(records.patch_dir)  # the stages of one pair run one after another
    diff = DiffRecord.read(records.diff)
    base = BaseRecord.read(records.build_base)
    image = BaseImage.load(project.root / base.image)
    profile = profile_named(definition.profile)
    layout = func_layout(base.layout, profile.livepatch_payload_version)
    spec = build_spec(project, patch, baseline)
    stack = _stack(project, baseline, spec.stack, image.build_id)
    # A replacement is uploaded while the payloads it replaces are loaded: its new statics need names of its own.
    private = f"@{patch}" if spec.action == "replace" else None
    payload = make_payload(records.extract.read_bytes(), diff.functions, image, profile, layout, stack, private)
    write_atomic(records.unsigned, payload.data)
    PayloadRecord.from_json({**payload.record(), "unsigned": records.unsigned.name,
                             "sha256": sha256_bytes(payload.data), "depends_build_id": stack.depends.hex(),
                             "stack": list(spec.stack), "action": spec.action},
                            records.payload).write(records.payload)


def _stack(project: Project, baseline: str, names: tuple[str, ...], base_build_id: bytes) -> Any:
    """What the payloads under this one provide (a payload.Stack), oldest first, from their payload and diff
    records."""
    from .payload import Stack

    depends, replaced, added = base_build_id, {}, {}
    for name in names:
        records = Records(project, baseline, name)
        payload = PayloadRecord.read(records.payload)
        diff = DiffRecord.read(records.diff)
        depends = bytes.fromhex(payload.build_id)
        replacing = {function.symbol for function in diff.functions}
        for function in payload.functions:
            if function.old_addr:
                replaced[function.name] = function.new_size
            else:  # a function an earlier payload added, patched again: its latest size
                for key, (loader_name, _size) in list(added.items()):
                    if loader_name == function.name:
                        added[key] = (loader_name, function.new_size)
        for symbol in diff.defined:
            if symbol.name not in replacing:
                added[symbol.xen_name] = (symbol.name, symbol.size)
    return Stack(depends, replaced, added)


def stage_sign(project: Project, baseline: str, patch: str) -> list[str]:
    """Sign and publish to out/; returns warnings (a loosely protected key) for the user."""
    from . import provenance
    from .keyscan import SigningKeyBytes, refuse_key_material
    from .sign import configured_keys, load_keys, sign

    definition = load_baseline(project, baseline)
    records = Records(project, baseline, patch)
    files.remove_temporaries(records.out_dir)
    keys = configured_keys(project.root)
    key, certificate, warnings = load_keys(keys)
    unsigned = owned_file(records.unsigned, records.patch_dir, "unsigned payload").read_bytes()
    # Behind the sandbox: no key material is signed, whatever put it there.
    refuse_key_material(unsigned, relative(records.unsigned, project.root),
                        SigningKeyBytes.of(key, keys.key.read_bytes()))
    signed = sign(unsigned, key, certificate)
    report = _report(project, definition, records, patch, unsigned, signed, keys.certificate)
    facts = report.to_json()
    recorded = BuildSpec(patch, tuple(report.stack), tuple(report.fixes))  # as build-patched built it
    statement = provenance.statement(project, baseline, records, facts, {
        "stack": report.stack, "fixes": report.fixes, "action": report.action, "depends_on": recorded.depends_on})
    envelope = provenance.envelope_bytes(statement, key)
    report = dataclasses.replace(report, provenance_sha256=sha256_bytes(envelope))
    write_atomic(records.signed, signed)
    write_atomic(records.provenance, envelope)
    report.write(records.report)
    return warnings


def _report(project: Project, definition: Baseline, records: Records, patch: str, unsigned: bytes, signed: bytes,
            certificate: Path) -> Report:
    checkout_record = CheckoutRecord.read(records.checkout)
    base = BaseRecord.read(records.build_base)
    payload = PayloadRecord.read(records.payload)
    diff = DiffRecord.read(records.diff)
    patched = PatchedRecord.read(records.patched)
    new_functions = sorted({f"{entry.object}: {name}" for entry in diff.objects for name in entry.new_functions})
    return Report(
        patch=patch,
        baseline=definition.name,
        commit=checkout_record.commit,
        source=checkout_record.source,
        patch_sha256=patched.patch_sha256,
        base_build_id=base.build_id,
        base_image=_path_for_report(project.root / base.image, records.out_dir),
        base_image_sha256=base.image_sha256,
        toolchain_lock_sha256=toolchain.lock_digest(project.lock_path),
        functions=[function.reported() for function in payload.functions],
        new_functions=new_functions,
        objects_changed=[entry.object for entry in diff.objects],
        warnings=[w for entry in diff.objects for w in entry.warnings + entry.bring_up],
        ignored=[i for entry in diff.objects for i in entry.ignored],
        payload_build_id=payload.build_id,
        unsigned_payload_sha256=sha256_bytes(unsigned),
        payload_sha256=sha256_bytes(signed),
        payload=records.signed.name,
        signer_certificate=_path_for_report(certificate, records.out_dir),
        depends_build_id=payload.depends_build_id,
        stack=patched.stack,
        fixes=patched.fixes,
        action=patched.action,
        applied=patched.applied,
        provenance=records.provenance.name,
        provenance_sha256="",  # the envelope signs the rest of the report: filled in once it is made
        xsplice_build_version=__version__,
    )


def _path_for_report(path: Path, report_dir: Path) -> str:
    """Relative to report.json when both live in this checkout (so the tree can move), else absolute."""
    resolved, root = path.resolve(), report_dir.resolve().parents[2]
    return os.path.relpath(resolved, report_dir.resolve()) if resolved.is_relative_to(root) else str(resolved)


def _apply_below(vm: Any, project: Project, baseline: str, patch: str, below: tuple[str, ...]) -> Any:
    """Load and apply the payloads a stacked payload goes on top of, oldest first, as an operator would.

    Its probes expect them applied, and Xen accepts it only on top of the payload applied last.
    Returns the first refusal (naming the payload below), or None when the stack is in place.
    """
    for earlier in below:
        payload = Records(project, baseline, earlier).signed.read_bytes()
        for verdict in (vm.upload(earlier, payload), vm.apply(earlier)):
            if not verdict.ok:
                return dataclasses.replace(verdict, reason=f"{earlier} (below {patch}): {verdict.reason}")
    return None


def stage_prove(project: Project, baseline: str, patch: str) -> None:
    """Load, apply and revert the signed payload on the baseline's real hypervisor in a VM, probing each phase.

    The file that ships is what Xen gets (its loader ignores the signature after the ELF). A
    refusal is the pair's failure, its reason the hypervisor's own line; the record keeps the
    console lines of a payload that went through.
    """
    from ..vm import xen_vm
    from ..vm.probes import load_probes, probe_file

    records = Records(project, baseline, patch)
    signed = records.signed.read_bytes()
    probes_path = probe_file(project, patch, baseline)
    probes = load_probes(probes_path) if probes_path.is_file() else []
    below = build_spec(project, patch, baseline).stack
    with xen_vm.for_stage(project, baseline) as vm:
        try:
            verdict = _apply_below(vm, project, baseline, patch, below) or vm.prove(patch, signed, probes)
        finally:
            for earlier in reversed(below):  # Xen reverts only the payload applied last
                vm.clean(earlier)
        build_id = vm.build_id
    if not verdict.ok:
        raise PayloadRejected(verdict.reason)
    write_json(records.proof, {"baseline": baseline, "patch": patch, "hypervisor_build_id": build_id,
                               "payload_sha256": sha256_bytes(signed), "probes": len(probes),
                               "verdict": "loaded, applied, reverted and unloaded", "console": list(verdict.console)})
