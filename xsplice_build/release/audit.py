"""Reproducibility audits: rebuild released payloads from scratch elsewhere and compare them bit for bit.

The rebuild runs in a new directory under a different absolute path, from a copy of
this checkout's sources only (dodo.py, pyproject.toml, toolchain.lock, baseline/,
patches/) with empty work/ and out/, through the ordinary stages up to the unsigned
payload. Identical bytes are reported with their hash; a difference is named section
by section and symbol by symbol (elf.compare) with its likely cause. Signatures are
RSA PKCS#1 v1.5, deterministic: with the release's key at hand the signed bytes are
compared too; without it, the release's signature is verified over the rebuilt bytes.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from ..elf.compare import TOOLCHAIN_DRIFT, compare_elf
from ..errors import SignatureError, XspliceError
from ..files import read_json, sha256_bytes
from ..patches import CUMULATIVE_JOIN, build_spec, pair_patch_digest
from ..pipeline.runner import run_in_child
from ..project import Project, check_name
from ..project import copy_sources as copy_project_sources
from ..records import Records
from ..stages import provenance, toolchain
from ..stages.sign import configured_keys, load_keys, sign, split, verify
from ..target.baseline import load_baseline
from .manifest import MANIFEST, Pair, failure_reason, load_manifest


@dataclass(frozen=True)
class Target:
    """One released payload to audit: where its signed bytes are and what its manifest says of them."""

    pair: Pair
    released: Path | None
    entry: dict[str, Any] | None = None
    certificate: Path | None = None
    skipped: str | None = None  # nothing to audit: the pair failed in the nightly
    problem: str | None = None  # cannot be rebuilt from this checkout's sources


def targets_from_manifest(path: Path) -> list[Target]:
    """Every entry of a release manifest; failed ones are listed as skipped, with the nightly's reason."""
    path = path.resolve()
    if path.is_dir():
        path = path / MANIFEST
    entries = load_manifest(path)
    signer = read_json(path, "release manifest")
    signer = signer.get("signer_certificate") if isinstance(signer, dict) else None
    certificate = path.parent / check_name("certificate", signer) if isinstance(signer, str) else None
    targets = []
    for item in entries:
        pair = Pair(check_name("baseline", item["baseline"]), check_name("patch", item["patch"]))
        if item["status"] != "ok":
            targets.append(Target(pair, None, item, skipped=f"failed in the nightly: {item.get('reason')}"))
            continue
        released = path.parent / pair.baseline / f"{pair.patch}.livepatch"
        targets.append(Target(pair, released, item, certificate))
    return targets


def targets_from_checkout(project: Project, baseline: str, patch: str) -> list[Target]:
    """The payload this checkout built for (baseline, patch), in out/."""
    name = load_baseline(project, baseline).name
    build_spec(project, patch, name)
    records = Records(project, name, patch)
    if not records.signed.is_file():
        raise XspliceError(f"{records.signed.relative_to(project.root)}: no payload to audit; run doit "
                           f"build-patch --baseline {name} {patch} first, or audit a release with --manifest")
    return [Target(Pair(name, patch), records.signed, None, configured_keys(project.root).certificate)]


def run(project: Project, targets: list[Target], processes: int, keep: bool, stream: TextIO) -> int:
    """Rebuild every target in a fresh directory, print a verdict for each; 0 when all are identical."""
    fresh = Path(tempfile.mkdtemp(prefix="xsplice-audit-")).resolve()
    try:
        copy_sources(project.root, fresh)
        targets = [_rebuildable(Project(fresh), target) for target in targets]
        buildable = [t for t in targets if t.skipped is None and t.problem is None]
        failures = rebuild(fresh, [t.pair for t in buildable], processes) if buildable else {}
        _say(stream, f"audit: rebuilt in {fresh} (sources of {project.root}, empty work/ and out/)")
        results = [_audit_one(project, fresh, target, failures, stream) for target in targets]
    finally:
        if keep:
            _say(stream, f"audit: kept {fresh}")
        else:
            shutil.rmtree(fresh, ignore_errors=True)
    audited = [r for r in results if r is not None]
    _say(stream, f"audit: {sum(audited)} identical, {len(audited) - sum(audited)} different or not rebuilt, "
                 f"{len(results) - len(audited)} skipped")
    return 0 if all(audited) else 1


def _rebuildable(fresh: Project, target: Target) -> Target:
    """The target, or the target marked skipped when this checkout has no such baseline or patch variant."""
    if target.skipped is not None:
        return target
    try:
        load_baseline(fresh, target.pair.baseline)
        build_spec(fresh, target.pair.patch, target.pair.baseline)
    except XspliceError as error:
        return replace(target, problem=error.message)
    return target


def copy_sources(root: Path, fresh: Path) -> None:
    """The checkout's sources in a fresh directory, with empty caches and outputs."""
    copy_project_sources(root, fresh)
    (fresh / "work").mkdir()
    (fresh / "out").mkdir()


def rebuild(fresh: Path, pairs: list[Pair], processes: int) -> dict[str, str]:
    """Run the stages up to each unsigned payload in `fresh`; returns each failed task's one-line reason."""
    # In a child process: the fresh checkout's dodo.py and doit database stay apart from this checkout's.
    # Cumulative payloads asked for by name (not a chain's) need their tasks made there too.
    cumulative = [pair.patch for pair in pairs if CUMULATIVE_JOIN in pair.patch]
    result = run_in_child(fresh, ["toolchain", *(f"payload:{pair.name}" for pair in pairs)], processes,
                          cumulative=cumulative)
    if not result.ran:
        raise XspliceError(f"the rebuild in {fresh} did not run (doit exited {result.code})")
    return result.failed


def _audit_one(project: Project, fresh: Path, target: Target, failures: dict[str, str],
               stream: TextIO) -> bool | None:
    name = target.pair.name
    if target.skipped is not None:
        _say(stream, f"audit {name}: skipped ({target.skipped})")
        return None
    if target.problem is not None:
        _say(stream, f"audit {name}: NOT REBUILT: {target.problem}")
        return False
    inputs = _input_differences(Project(fresh), target)
    for line in inputs:
        _say(stream, f"audit {name}:   input differs: {line}")
    failed = failure_reason(target.pair, failures)
    rebuilt_path = Records(Project(fresh), target.pair.baseline, target.pair.patch).unsigned
    if failed or not rebuilt_path.is_file():
        _say(stream, f"audit {name}: NOT REBUILT: {failed or 'no unsigned payload was made'}")
        return False
    try:
        signed, released = _released(target)
    except XspliceError as error:
        _say(stream, f"audit {name}: RELEASE DAMAGED: {error.message}")
        return False
    rebuilt = rebuilt_path.read_bytes()
    if rebuilt != released:
        _report_difference(stream, name, released, rebuilt, inputs)
        return False
    _say(stream, f"audit {name}: identical: unsigned payload sha256 {sha256_bytes(released)} "
                 f"(released {target.released}) = {sha256_bytes(rebuilt)} (rebuilt {rebuilt_path})")
    signature_ok = _compare_signed(project, stream, name, target, signed, rebuilt)
    return _check_provenance(Project(fresh), stream, target, signed) and signature_ok


def _check_provenance(fresh: Project, stream: TextIO, target: Target, signed: bytes) -> bool:
    """The envelope beside the payload verifies, names these signed bytes, and lists the rebuild's materials."""
    assert target.released is not None
    name, path = target.pair.name, provenance.envelope_path(target.released)
    if target.certificate is None or not target.certificate.is_file():
        _say(stream, f"audit {name}: PROVENANCE NOT CHECKED: no signer certificate with the release")
        return False
    try:
        content = provenance.verify_envelope(path, target.certificate)
    except SignatureError as error:
        _say(stream, f"audit {name}: PROVENANCE DOES NOT VERIFY: {error.message}")
        return False
    stated = provenance.subject_digest(content, target.released.name)
    if stated != sha256_bytes(signed):
        _say(stream, f"audit {name}: PROVENANCE IS NOT OF THIS PAYLOAD: subject sha256 {stated}, the payload's "
                     f"{sha256_bytes(signed)}")
        return False
    records = Records(fresh, target.pair.baseline, target.pair.patch)
    failing, noted = provenance.material_differences(content, provenance.materials(fresh, target.pair.baseline,
                                                                                   records))
    for line in noted:
        _say(stream, f"audit {name}:   provenance material differs (the bytes decide): {line}")
    for line in failing:
        _say(stream, f"audit {name}:   PROVENANCE MATERIAL DIFFERS: {line}")
    if failing:
        return False
    _say(stream, f"audit {name}: provenance verifies with {target.certificate}; its materials are the rebuild's "
                 f"({path.name})")
    return True


def _released(target: Target) -> tuple[bytes, bytes]:
    """The released signed bytes and the unsigned payload they carry, checked against the manifest entry."""
    assert target.released is not None
    try:
        signed = target.released.read_bytes()
    except OSError as error:
        raise XspliceError(f"{target.released}: cannot read the released payload ({error.strerror})") from None
    unsigned, _signature = split(signed, str(target.released))
    entry = target.entry or {}
    for key, data in (("payload_sha256", signed), ("unsigned_payload_sha256", unsigned)):
        if key in entry and entry[key] != sha256_bytes(data):
            raise XspliceError(f"{target.released}: sha256 {sha256_bytes(data)} is not the manifest's {key} "
                               f"{entry[key]}")
    return signed, unsigned


def _input_differences(fresh: Project, target: Target) -> list[str]:
    """What the manifest says the payload was built from that this checkout's sources are not."""
    entry = target.entry or {}
    pair = target.pair
    checks = [("patch_sha256", lambda: pair_patch_digest(fresh, pair.patch, pair.baseline),
               f"patches/{pair.patch}/{pair.baseline}.patch"),
              ("commit", lambda: load_baseline(fresh, pair.baseline).source.commit,
               f"baseline/{pair.baseline}.toml pinned commit"),
              ("toolchain_lock_sha256", lambda: toolchain.lock_digest(fresh.lock_path), "toolchain.lock")]
    differences = []
    for key, current, what in checks:
        if key not in entry:
            continue
        try:
            value = current()
        except XspliceError as error:
            value = f"unavailable ({error.message})"
        if value != entry[key]:
            differences.append(f"{what}: {value} here, {entry[key]} in the release")
    return differences


def _report_difference(stream: TextIO, name: str, released: bytes, rebuilt: bytes, inputs: list[str]) -> None:
    comparison = compare_elf(released, rebuilt, "released", "rebuilt")
    cause = TOOLCHAIN_DRIFT if any(line.startswith("toolchain.lock") for line in inputs) else comparison.cause
    _say(stream, f"audit {name}: DIFFERENT (likely cause: {cause}): unsigned payload sha256 "
                 f"{sha256_bytes(released)} released, {sha256_bytes(rebuilt)} rebuilt")
    for path in comparison.leaked_paths:
        _say(stream, f"audit {name}:   path in the bytes: {path}")
    for line in comparison.differences:
        _say(stream, f"audit {name}:   {line}")


def _compare_signed(project: Project, stream: TextIO, name: str, target: Target, signed: bytes,
                    rebuilt: bytes) -> bool:
    keys = configured_keys(project.root)
    if keys.key.is_file() and keys.certificate.is_file():
        key, certificate, _ = load_keys(keys)
        resigned = sign(rebuilt, key, certificate)
        if resigned == signed:
            _say(stream, f"audit {name}: signed bytes identical too (signed here with {keys.key}): sha256 "
                         f"{sha256_bytes(signed)}")
            return True
        _say(stream, f"audit {name}: signed bytes differ: the release was not signed with {keys.key} (the "
                     "unsigned payload is identical; signatures are deterministic only per key)")
    else:
        _say(stream, f"audit {name}: signed bytes not compared: no signing key here ({keys.key})")
    if target.certificate is None or not target.certificate.is_file():
        _say(stream, f"audit {name}: the release's signature was not checked: no signer certificate with it")
        return True
    try:
        verify(signed, target.certificate, str(target.released))
    except SignatureError as error:
        _say(stream, f"audit {name}: SIGNATURE DOES NOT VERIFY: {error.message}")
        return False
    _say(stream, f"audit {name}: the release's signature verifies with {target.certificate} over the rebuilt bytes")
    return True


def _say(stream: TextIO, line: str) -> None:
    print(f"xsplice: {line}", file=stream, flush=True)
