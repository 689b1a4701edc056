"""Provenance: the DSSE envelope beside each payload, checked with stock tools and by audits."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, Checkout

from xsplice_build.errors import SignatureError
from xsplice_build.project import Project
from xsplice_build.stages import provenance
from xsplice_build.stages.sign import configured_keys, load_keys
from xsplice_build.stages.steps import Records, stage_sign


def _documented_check() -> str:
    text = (REPO / "docs" / "provenance.md").read_text()
    blocks = re.findall(r"```sh example\n(.*?)```", text, re.DOTALL)
    assert len(blocks) == 1, "docs/provenance.md has one sh block: the stock-tool check"
    return blocks[0]


def _release_like(built: Checkout, destination: Path) -> Path:
    """What a third party receives: the payload, its envelope and the signer's certificate."""
    destination.mkdir()
    out = built.out("XSA-131")
    for name in ("XSA-131.livepatch", "XSA-131.livepatch.intoto.json"):
        shutil.copy(out / name, destination / name)
    shutil.copy(built.root / "keys" / "development" / "signing_cert.pem", destination / "signer.pem")
    return destination


@pytest.mark.skipif(shutil.which("jq") is None, reason="jq is not installed (./setup installs it)")
def test_the_documented_stock_tool_check_verifies_a_built_payload(built: Checkout, tmp_path: Path) -> None:
    where = _release_like(built, tmp_path / "received")
    result = subprocess.run(["bash", "-c", _documented_check()], cwd=where, capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["Verified OK", "subject sha256 matches XSA-131.livepatch"]
    # The same check refuses a payload that is not the statement's subject.
    (where / "XSA-131.livepatch").write_bytes((where / "XSA-131.livepatch").read_bytes() + b"\0")
    tampered = subprocess.run(["bash", "-c", _documented_check()], cwd=where, capture_output=True, text=True,
                              check=False)
    assert tampered.returncode != 0 and "subject sha256 matches" not in tampered.stdout


def test_the_statement_names_what_the_payload_was_built_from(built: Checkout) -> None:
    out = built.out("XSA-131")
    report = built.report("XSA-131")
    content = provenance.verify_envelope(out / "XSA-131.livepatch.intoto.json",
                                         built.root / "keys" / "development" / "signing_cert.pem")
    assert content["subject"] == [{"name": "XSA-131.livepatch", "digest": {"sha256": report["payload_sha256"]}}]
    stated = {m["name"]: m for m in content["predicate"]["buildDefinition"]["resolvedDependencies"]}
    assert stated["baseline:minixen"]["digest"] == {"gitCommit": report["commit"]}
    assert stated["patches/XSA-131/minixen.patch"]["digest"] == {"sha256": report["patch_sha256"]}
    assert stated["toolchain.lock"]["digest"] == {"sha256": report["toolchain_lock_sha256"]}
    assert stated["base-image:minixen"]["annotations"] == {"build_id": report["base_build_id"]}
    assert {"toolchain:gcc", "toolchain:cc1", "toolchain:as", "toolchain:ld", "xsplice-build"} <= set(stated)
    assert "gcc" in stated["toolchain:gcc"]["annotations"]["version"]
    byproduct = content["predicate"]["runDetails"]["byproducts"][0]
    assert byproduct["digest"] == {"sha256": report["unsigned_payload_sha256"]}
    assert report["provenance_sha256"] == provenance.sha256_of(out / "XSA-131.livepatch.intoto.json")


def test_signing_again_gives_the_same_envelope_bytes(built: Checkout) -> None:
    records = Records(Project(built.root), "minixen", "XSA-131")
    before = records.provenance.read_bytes()
    records.provenance.unlink()
    stage_sign(Project(built.root), "minixen", "XSA-131")
    assert records.provenance.read_bytes() == before


def test_an_envelope_signed_by_another_key_or_edited_is_refused(built: Checkout, tmp_path: Path) -> None:
    envelope = built.out("XSA-131") / "XSA-131.livepatch.intoto.json"
    certificate = built.root / "keys" / "development" / "signing_cert.pem"
    data = json.loads(envelope.read_text())
    statement = provenance.statement_of(envelope)
    statement["subject"][0]["digest"]["sha256"] = "0" * 64
    data["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    edited = tmp_path / "edited.intoto.json"
    edited.write_text(json.dumps(data))
    with pytest.raises(SignatureError, match="does not verify"):
        provenance.verify_envelope(edited, certificate)
    garbage = tmp_path / "garbage.intoto.json"
    garbage.write_text("{")
    with pytest.raises(SignatureError, match="not a DSSE envelope"):
        provenance.verify_envelope(garbage, certificate)


def test_the_audit_checks_the_envelope_and_the_materials(built: Checkout) -> None:
    result = built.doit("audit", "XSA-131")
    assert "provenance verifies with" in result.stdout, result.stdout
    # A statement signed with this key but claiming another patch: the rebuilt materials differ.
    records = Records(Project(built.root), "minixen", "XSA-131")
    content = provenance.statement_of(records.provenance)
    for material in content["predicate"]["buildDefinition"]["resolvedDependencies"]:
        if material["name"] == "patches/XSA-131/minixen.patch":
            material["digest"]["sha256"] = "1" * 64
    key, _certificate, _ = load_keys(configured_keys(built.root))
    records.provenance.write_bytes(provenance.envelope_bytes(content, key))
    refused = built.doit("audit", "XSA-131", check=False)
    assert refused.returncode == 1
    assert "PROVENANCE MATERIAL DIFFERS: patches/XSA-131/minixen.patch" in refused.stdout
