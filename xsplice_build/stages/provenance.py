"""Provenance: an in-toto Statement (v1) with a SLSA provenance (v1) predicate per payload, in a signed DSSE envelope.

The statement says what one signed payload was built from: its subject is the signed
file's name and sha256; its resolved dependencies are the baseline's source (pinned
commit, Debian package version when there is one) and definition, every patch applied
(the advisories it stacks on, then its own fixes) with their sha256, toolchain.lock and
each locked tool, the base image the payload depends on, and this tool's version and
code identity. The envelope is DSSE (securesystemslib's Envelope and CryptoSigner),
signed with the release key using RSA PKCS#1 v1.5 and SHA-256, so the same inputs and
key give the same bytes. Audits rebuild the materials elsewhere and compare them with
the statement's (`material_differences`).
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import CryptoSigner, SSlibKey

from .. import __version__
from ..errors import SignatureError, XspliceError
from ..files import dump_json
from ..project import Project
from ..records import PROVENANCE_SUFFIX, BaseRecord, CheckoutRecord, PatchedRecord, Records
from ..target.baseline import load_baseline
from . import toolchain

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
BUILD_TYPE = "urn:xsplice-build:livepatch-payload:v1"
SUFFIX = PROVENANCE_SUFFIX
# RSA PKCS#1 v1.5: deterministic, the same scheme as the payload's own signature.
SCHEME = "rsa-pkcs1v15-sha256"
# The material that names this tool's own code: it may differ in an audit by a newer tool (the bytes decide).
TOOL_MATERIAL = "xsplice-build"
_PACKAGE = Path(__file__).resolve().parents[1]  # the whole package, not only stages/


def envelope_path(payload: Path) -> Path:
    """Where the envelope of a signed payload lives: beside it, named after it."""
    return payload.with_name(payload.name + SUFFIX)


def code_identity() -> str:
    """sha256 over this package's code (paths and contents, sorted): which xsplice-build built the payload."""
    digest = hashlib.sha256()
    for path in sorted(p for p in _PACKAGE.rglob("*") if p.is_file() and _is_code(p)):
        digest.update(path.relative_to(_PACKAGE).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _is_code(path: Path) -> bool:
    return "__pycache__" not in path.parts and (path.suffix == ".py" or path.parent.name == "data")


def materials(project: Project, baseline: str, records: Records) -> list[dict[str, Any]]:
    """The resolved dependencies of one pair, from its stage records, sorted by name."""
    definition = load_baseline(project, baseline)
    checkout = CheckoutRecord.read(records.checkout)
    base = BaseRecord.read(records.build_base)
    patched = PatchedRecord.read(records.patched)
    source: dict[str, Any] = {"name": f"baseline:{baseline}", "digest": {"gitCommit": checkout.commit},
                              "annotations": {"kind": definition.source.kind}}
    if definition.source.debian:
        package, _, version = definition.source.debian.partition("=")
        source["uri"] = f"pkg:deb/debian/{package}@{version}?arch=source"
        source["annotations"]["debian_version"] = version
    elif definition.source.git:
        source["uri"] = f"git+{definition.source.git}@{checkout.commit}"
    found = [source, _file_material(project, definition.definition)]
    if definition.build.config:
        found.append(_file_material(project, definition.build.config))
    for applied in patched.applied:
        found.append({"name": applied.path, "digest": {"sha256": applied.sha256},
                      "annotations": {"role": applied.role}})
    # The locked tools are the ones that ran: the toolchain stage refuses a machine that has others.
    found.append({"name": "toolchain.lock", "digest": {"sha256": toolchain.lock_digest(project.lock_path)}})
    for name, tool in sorted(toolchain.read_lock(project.lock_path).items()):
        found.append({"name": f"toolchain:{name}", "uri": f"file://{tool.path}",
                      "digest": {"sha256": tool.sha256}, "annotations": {"version": tool.version}})
    found.append({"name": f"base-image:{baseline}", "digest": {"sha256": base.image_sha256},
                  "annotations": {"build_id": base.build_id}})
    found.append({"name": TOOL_MATERIAL, "digest": {"sha256": code_identity()},
                  "annotations": {"version": __version__}})
    return sorted(found, key=lambda m: m["name"])


def _file_material(project: Project, path: Path) -> dict[str, Any]:
    return {"name": path.resolve().relative_to(project.root.resolve()).as_posix(),
            "digest": {"sha256": hashlib.sha256(path.read_bytes()).hexdigest()}}


def statement(project: Project, baseline: str, records: Records, report: dict[str, Any],
              parameters: dict[str, Any]) -> dict[str, Any]:
    """The in-toto Statement of one signed payload (no dates: the same inputs give the same statement)."""
    recipe = load_baseline(project, baseline)
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": report["payload"], "digest": {"sha256": report["payload_sha256"]}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {"baseline": baseline, "patch": report["patch"], **parameters},
                "internalParameters": {"build_command": list(recipe.build.command), "image": recipe.build.image,
                                       "split_sections": recipe.build.split_sections, "profile": recipe.profile,
                                       "env": dict(sorted(recipe.build.env.items()))},
                "resolvedDependencies": materials(project, baseline, records),
            },
            "runDetails": {
                "builder": {"id": f"urn:xsplice-build:{__version__}"},
                "byproducts": [
                    {"name": f"{report['payload']}.unsigned", "digest": {"sha256": report["unsigned_payload_sha256"]},
                     "annotations": {"build_id": report["payload_build_id"],
                                     "depends_build_id": report.get("depends_build_id", report["base_build_id"]),
                                     "xen_depends_build_id": report["base_build_id"]}},
                ],
            },
        },
    }


def envelope_bytes(content: dict[str, Any], key: rsa.RSAPrivateKey) -> bytes:
    """The DSSE envelope of `content`, signed with `key`, as canonical JSON bytes."""
    body = dump_json(content)
    envelope = Envelope(payload=body, payload_type=PAYLOAD_TYPE, signatures={})
    envelope.sign(CryptoSigner(key, SSlibKey.from_crypto(key.public_key(), scheme=SCHEME)))
    return dump_json(envelope.to_dict())


def verify_envelope(path: Path, certificate: Path) -> dict[str, Any]:
    """Check the envelope's signature with the certificate's key; returns the statement it carries."""
    try:
        envelope = Envelope.from_dict(json.loads(path.read_bytes()))
    except FileNotFoundError:
        raise SignatureError(f"{path}: no provenance envelope beside the payload") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SignatureError(f"{path}: not a DSSE envelope ({type(error).__name__})") from None
    try:
        public = x509.load_pem_x509_certificate(certificate.read_bytes()).public_key()
    except (OSError, ValueError) as error:
        raise SignatureError(f"{certificate}: not a readable PEM certificate ({type(error).__name__})") from None
    key = SSlibKey.from_crypto(public, scheme=SCHEME)
    if envelope.payload_type != PAYLOAD_TYPE:
        raise SignatureError(f"{path}: payloadType {envelope.payload_type!r}, expected {PAYLOAD_TYPE!r}")
    try:
        envelope.verify([key], 1)
    except VerificationError:
        raise SignatureError(f"{path}: the envelope's signature does not verify with {certificate}") from None
    try:
        content = json.loads(envelope.payload)
    except ValueError:
        raise SignatureError(f"{path}: the signed payload is not JSON") from None
    if not isinstance(content, dict) or content.get("_type") != STATEMENT_TYPE \
            or content.get("predicateType") != PREDICATE_TYPE:
        raise SignatureError(f"{path}: not an in-toto Statement v1 with a SLSA provenance v1 predicate")
    return content


def subject_digest(content: dict[str, Any], name: str) -> str | None:
    for subject in content.get("subject") or []:
        if isinstance(subject, dict) and subject.get("name") == name:
            return (subject.get("digest") or {}).get("sha256")
    return None


def material_differences(stated: dict[str, Any], rebuilt: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(differences that fail an audit, differences only noted): materials by name, stated versus rebuilt."""
    try:
        claimed = stated["predicate"]["buildDefinition"]["resolvedDependencies"]
        by_name = {m["name"]: m for m in claimed}
    except (KeyError, TypeError) as error:
        raise XspliceError(f"provenance statement: no resolvedDependencies ({error})") from None
    here = {m["name"]: m for m in rebuilt}
    failing, noted = [], []
    for name in sorted(set(by_name) | set(here)):
        mine, theirs = here.get(name), by_name.get(name)
        if mine is not None and theirs is not None and mine.get("digest") == theirs.get("digest"):
            continue
        line = f"{name}: {_digest(mine)} rebuilt, {_digest(theirs)} in the statement"
        (noted if name == TOOL_MATERIAL else failing).append(line)
    return failing, noted


def _digest(material: dict[str, Any] | None) -> str:
    if material is None:
        return "absent"
    return ", ".join(f"{k}:{v}" for k, v in sorted((material.get("digest") or {}).items()))


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def statement_of(path: Path) -> dict[str, Any]:
    """The statement inside an envelope, unverified (for printing; verify_envelope before trusting it)."""
    return json.loads(base64.b64decode(json.loads(path.read_bytes())["payload"]))
