"""`xsplice-build verify`: Xen's loader rules offline, on real payloads and hostile edits of them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import Checkout
from payload_edits import CASES, Case, Good, resign, unsigned_payload

from xsplice_build.runtime.verify import link_payload
from xsplice_build.stages import sign
from xsplice_build.target.image import BaseImage


def _verify(checkout: Checkout, payload: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return checkout.xsplice("verify", str(payload), "--image", str(_image(checkout)), *extra)


def _image(checkout: Checkout) -> Path:
    return checkout.work("minixen", "base", "tree", "xen-syms")


def _refused(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout == "" and "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("patch", ["XSA-131", "regression-test"])
def test_payloads_the_pipeline_makes_verify(built_once: Checkout, patch: str) -> None:
    payload = built_once.out(patch) / f"{patch}.livepatch"
    result = _verify(built_once, payload)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    report = built_once.report(patch)
    assert f"build-id {report['base_build_id']}" in lines[0]
    assert report["functions"][0]["name"] in lines[0]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_verify_judges_each_parity_case_as_the_table_says(built_once: Checkout, tmp_path: Path, case: Case) -> None:
    """A refusal is one line naming the payload and the rule; an acceptance is the one-line summary."""
    good = Good(unsigned_payload(built_once.out("XSA-131") / "XSA-131.livepatch"), BaseImage.load(_image(built_once)))
    payload = tmp_path / f"{case.name}.livepatch"
    payload.write_bytes(resign(case.make(good), built_once.root / "keys" / "development"))
    result = _verify(built_once, payload)
    if case.verify.outcome == "accepted":
        assert result.returncode == 0 and "verified against" in result.stdout, result.stderr
        return
    line = _refused(result)
    assert line.startswith(f"xsplice-build: {payload}: ")
    assert case.verify.says in line


def test_a_flipped_byte_fails_the_signature(built_once: Checkout, tmp_path: Path) -> None:
    signed = bytearray((built_once.out("XSA-131") / "XSA-131.livepatch").read_bytes())
    signed[0x60] ^= 0x01
    payload = tmp_path / "flipped.livepatch"
    payload.write_bytes(bytes(signed))
    assert "signature does not verify" in _refused(_verify(built_once, payload))


def test_an_unsigned_payload_is_refused(built_once: Checkout, tmp_path: Path) -> None:
    payload = tmp_path / "unsigned.livepatch"
    payload.write_bytes(unsigned_payload(built_once.out("XSA-131") / "XSA-131.livepatch"))
    assert "the payload is unsigned" in _refused(_verify(built_once, payload))


def test_another_certificate_is_not_trusted(built_once: Checkout, tmp_path: Path) -> None:
    other = sign.SigningKeys(tmp_path / "keys" / "key.pem", tmp_path / "keys" / "cert.pem", development=True)
    sign.make_development_keys(other)
    payload = built_once.out("XSA-131") / "XSA-131.livepatch"
    line = _refused(_verify(built_once, payload, "--cert", str(other.certificate)))
    assert "signature does not verify" in line and str(other.certificate) in line


def test_relocations_are_resolved_against_the_image(built_once: Checkout) -> None:
    """The linked text's calls land on the image's functions, as the loader resolves them."""
    unsigned = unsigned_payload(built_once.out("XSA-131") / "XSA-131.livepatch")
    image = BaseImage.load(_image(built_once))
    linked = link_payload(unsigned, "XSA-131", image, base=0x20000000)
    text = linked.elf.section_named(".text.do_domctl")
    target = image.lookup("domain_set_max_vcpus", "test").value
    calls = [r for r in text.relocations if linked.elf.symbols[r.symbol].name == "domain_set_max_vcpus"]
    assert calls
    for rela in calls:
        place = linked.addresses[text.index] + rela.offset
        displacement = int.from_bytes(linked.contents[text.index][rela.offset:rela.offset + 4], "little",
                                      signed=True)
        assert place + displacement - rela.addend == target
    assert linked.functions[0].old_addr == image.lookup("do_domctl", "test").value
    assert linked.functions[0].patch_offset == 4  # minixen is built with ENDBR64


def test_a_load_address_out_of_reach_overflows(built_once: Checkout) -> None:
    from xsplice_build.errors import PayloadRejected

    unsigned = unsigned_payload(built_once.out("XSA-131") / "XSA-131.livepatch")
    with pytest.raises(PayloadRejected, match="overflows"):
        link_payload(unsigned, "XSA-131", BaseImage.load(_image(built_once)), base=0x7F0000000000)


def test_a_certificate_not_for_code_signing_is_refused_on_request(built_once: Checkout, tmp_path: Path) -> None:
    from test_sign import _other_certificate

    development = built_once.root / "keys" / "development"
    keys = sign.SigningKeys(development / "signing_key.pem", development / "signing_cert.pem", development=True)
    server = _other_certificate(tmp_path, keys, code_signing=False)
    payload = built_once.out("XSA-131") / "XSA-131.livepatch"
    line = _refused(_verify(built_once, payload, "--cert", str(server), "--require-code-signing"))
    assert line == (f"xsplice-build: {server}: not a code-signing certificate (no codeSigning extended key usage), "
                    "and XSPLICE_REQUIRE_CODE_SIGNING or --require-code-signing asks for one")
    # The development certificate carries codeSigning: the requirement holds.
    assert _verify(built_once, payload, "--require-code-signing").returncode == 0


@pytest.mark.parametrize("cut", [0, 1, 63, 64, 200, 1000, -200, -1])
def test_a_truncated_or_foreign_payload_is_refused_in_one_line(built_once: Checkout, tmp_path: Path,
                                                                cut: int) -> None:
    """Truncated then signed again: the signature holds, the ELF reader refuses it in one line."""
    unsigned = unsigned_payload(built_once.out("XSA-131") / "XSA-131.livepatch")
    payload = tmp_path / "cut.livepatch"
    payload.write_bytes(resign(unsigned[:cut] or b"not an ELF file at all", built_once.root / "keys" / "development"))
    line = _refused(_verify(built_once, payload))
    assert line.startswith(f"xsplice-build: {payload}: ")
    assert any(words in line for words in ("not an ELF file", "truncated ELF header", "lies outside the file",
                                           "lies past the end of the file"))
