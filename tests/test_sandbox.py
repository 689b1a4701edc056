"""The build sandbox: every way a patch's build could reach the signing key, tried for real on minixen;
and the scan before signing, on payloads that hold key material.

Each escape patch is a real patch (tools/make-patch between two copies of minixen) whose C code, asm
or Makefile rules try one route; the build runs through doit as a user's would. Outcome: the build
fails or the key is absent, and no file the run wrote, nor anything it printed, holds a byte of the
key. A few routes are also run with the sandbox turned off, to show each patch really reaches the key
there (so the sandboxed run passing is not luck).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import REPO, Checkout, one_line_failure
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from xsplice_build.errors import BuildError, PayloadRejected
from xsplice_build.project import Project
from xsplice_build.records import Records
from xsplice_build.stages import keyscan, sandbox
from xsplice_build.stages.keyscan import SigningKeyBytes, find_key_material, refuse_key_material

MINIXEN = REPO / "baseline" / "sources" / "minixen"
TRIGGER = "    case XEN_DOMCTL_max_vcpus:\n"
UNSAFE = {sandbox.UNSANDBOXED_ENV: "1"}


# ---- helpers -----------------------------------------------------------------------------------------------

def _key(checkout: Checkout) -> Path:
    return checkout.root / "keys" / "development" / "signing_key.pem"


def _secrets(key_path: Path) -> list[bytes]:
    """What a leak of the key would contain: each base64 line of its PEM, its DER, its private exponent."""
    pem = key_path.read_bytes()
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    lines = [line for line in pem.splitlines() if len(line) == 64]
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    d = key.private_numbers().d
    return [*lines, der[40:104], d.to_bytes((d.bit_length() + 7) // 8, "big")[:64]]


def _holding_key(checkout: Checkout, printed: str, secrets: list[bytes]) -> list[str]:
    """Every file under work/ and out/ (but the key itself) and the printed output that holds key bytes."""
    holders = [name for name, text in (("printed output", printed.encode()),) if any(s in text for s in secrets)]
    for top in (checkout.root / "work", checkout.root / "out"):
        for path in top.rglob("*"):
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                if any(secret in data for secret in secrets):
                    holders.append(str(path.relative_to(checkout.root)))
    return holders


def _write_patch(checkout: Checkout, name: str, scratch: Path, edits: dict[str, tuple[str, str]]) -> None:
    """patches/NAME/minixen.patch: minixen with each (old -> new) text edit, as tools/make-patch writes it."""
    original, edited = scratch / f"{name}-a", scratch / f"{name}-b"
    shutil.copytree(MINIXEN, original)
    shutil.copytree(MINIXEN, edited)
    for relative, (old, new) in edits.items():
        text = (edited / relative).read_text()
        assert old in text, relative
        (edited / relative).write_text(text.replace(old, new, 1))
    diff = subprocess.run([str(REPO / "tools" / "make-patch"), str(original), str(edited)], capture_output=True,
                          text=True, check=True).stdout
    (checkout.root / "patches" / name).mkdir()
    (checkout.root / "patches" / name / "minixen.patch").write_text(f"Escape test {name}.\n\n---\n{diff}")


def _incbin(path: str) -> dict[str, tuple[str, str]]:
    """do_domctl carries the file's bytes in its own code (jumped over), as the reported attack did."""
    return {"common/domctl.c": (TRIGGER, TRIGGER + "        if ( op->u.max_vcpus.max == 0x4c45414b )\n"
                                "            asm volatile ( \"jmp 1f\\n\\t.incbin \\\"" + path + "\\\"\\n1:\" );\n")}


def _make_rule(recipe: list[str]) -> dict[str, tuple[str, str]]:
    """A Makefile rule making common/leak.bin, which do_domctl then carries (.incbin): the recipe runs at build time."""
    rule = "\ncommon/domctl.o: common/leak.bin\ncommon/leak.bin:\n" + "".join(f"\t{line}\n" for line in recipe)
    return {**_incbin("common/leak.bin"), "Makefile": (".PHONY: all clean\n", ".PHONY: all clean\n" + rule)}


def _build(checkout: Checkout, name: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return checkout.doit("build-patch", name, check=False, env=env)


def _outcome(checkout: Checkout, name: str, result: subprocess.CompletedProcess[str]) -> str:
    """'build error: LINE' or 'key absent' (signed payload without the key); fails on anything else."""
    printed = result.stdout + result.stderr
    holders = _holding_key(checkout, printed, _secrets(_key(checkout)))
    assert not holders, f"key bytes in {holders}:\n{printed}"
    if result.returncode != 0:
        return "build error: " + one_line_failure(result)
    assert (checkout.out(name) / f"{name}.livepatch").is_file(), printed
    return "key absent"


# ---- escape routes, sandboxed ------------------------------------------------------------------------------

ROUTES: dict[str, Callable[[Path], dict[str, tuple[str, str]]]] = {
    "incbin-relative": lambda root: _incbin("../../../../../keys/development/signing_key.pem"),
    "incbin-absolute": lambda root: _incbin(f"{root}/keys/development/signing_key.pem"),
    "include": lambda root: {"common/domctl.c": (
        "long do_domctl(", f"static const char xsplice_leak[] =\n#include \"{root}/keys/development/signing_key.pem\""
                           "\n;\nlong do_domctl(")},
    "makefile-copy": lambda root: _make_rule([f"-cp {root}/keys/development/signing_key.pem $@", "touch $@"]),
    "symlink": lambda root: _make_rule([f"ln -sf {root}/keys/development/signing_key.pem $@"]),
    "proc-self-root": lambda root: _incbin(f"/proc/self/root{root}/keys/development/signing_key.pem"),
    # Every process the build can see: its root and working directory, and each regular file it holds
    # open (the test process keeps the key open; doit, the signing process, runs in the checkout).
    "proc-pid": lambda root: _make_rule([
        "for p in /proc/[0-9]*; do cat $$p/root" f"{root}/keys/development/signing_key.pem "
        "$$p/cwd/keys/development/signing_key.pem; for f in $$p/fd/*; do [ -f $$f ] && grep -q 'PRIVATE KEY' $$f "
        "&& cat $$f; done; done > $@ 2>/dev/null; true"]),
    "unmount-the-cover": lambda root: _make_rule([
        f"-umount {root}/keys", f"-unshare -rm sh -c 'umount {root}/keys; cat {root}/keys/development/*.pem' > $@",
        f"-cat {root}/keys/development/signing_key.pem >> $@", "touch $@"]),
}


@pytest.mark.parametrize("route", list(ROUTES))
def test_an_escape_route_does_not_reach_the_key(built: Checkout, tmp_path: Path, route: str) -> None:
    _write_patch(built, route, tmp_path, ROUTES[route](built.root))
    with _key(built).open("rb"):  # held open: what /proc/<this process>/fd would show a build that sees it
        result = _build(built, route)
    outcome = _outcome(built, route, result)
    print(f"route {route}: {outcome}")  # the table of routes and outcomes (pytest -s)
    if route in ("makefile-copy", "proc-pid", "unmount-the-cover"):
        assert outcome == "key absent", outcome  # the recipe ran, found nothing, and the build went on
    else:
        assert outcome.startswith(f"build error: xsplice: FAILED build-patched:minixen/{route}: building minixen "
                                  "failed"), outcome


def test_the_build_cannot_reach_the_network(built: Checkout, tmp_path: Path) -> None:
    with _listener() as connections:
        port = connections.port
        _write_patch(built, "network", tmp_path, _make_rule([
            f"python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}), timeout=5).sendall(b\"x\")' "
            "&& echo NETWORK-REACHED || echo NETWORK-BLOCKED", "touch $@"]))
        result = _build(built, "network")
    assert _outcome(built, "network", result) == "key absent"
    log = (built.work("minixen", "patches", "network", "build.log")).read_text()
    lines = log.splitlines()  # what the recipe printed (make also echoes the recipe, with both words)
    assert "NETWORK-BLOCKED" in lines and "NETWORK-REACHED" not in lines
    assert connections.accepted == 0


def test_the_build_writes_nowhere_but_its_own_directory(built: Checkout, tmp_path: Path) -> None:
    root = built.root
    targets = [root / "keys" / "development" / "planted.pem", root / "out" / "planted", root / "planted",
               root / "work" / "minixen" / "base" / "tree" / "planted", root / "work" / "planted"]
    lock = (root / "toolchain.lock").read_bytes()
    recipe = [f"-echo planted > {target}" for target in targets]
    _write_patch(built, "write-outside", tmp_path, _make_rule([*recipe, f"-echo planted >> {root}/toolchain.lock",
                                                               "touch $@"]))
    assert _outcome(built, "write-outside", _build(built, "write-outside")) == "key absent"
    assert [target for target in targets if target.exists()] == []
    assert (root / "toolchain.lock").read_bytes() == lock


def test_the_build_cannot_write_the_reuse_index(built: Checkout, tmp_path: Path) -> None:
    # The index decides what later patches' builds compile (sandboxed_reuse.py): a build that could write it
    # could make another patch's build take an original object and leave that patch's change out.
    built.doit("build-patch", "inline-header")  # the baseline's first header fix: its units get indexed
    entry = built.work("minixen", "orig", "reuse-index", "common", "kernel.o.json")
    indexed = entry.read_bytes()
    planted = entry.with_name("planted.json")
    _write_patch(built, "write-index", tmp_path, _make_rule([f"-mkdir -p {entry.parent}", f"-echo forged > {entry}",
                                                              f"-echo forged > {planted}", "touch $@"]))
    assert _outcome(built, "write-index", _build(built, "write-index")) == "key absent"
    assert entry.read_bytes() == indexed and not planted.exists()
    built.doit("forget", "build-patched:minixen/write-index")
    unsafe = _build(built, "write-index", env=UNSAFE)  # the same rule without the sandbox: it does reach the index
    assert unsafe.returncode == 0, unsafe.stdout + unsafe.stderr
    assert planted.read_text() == "forged\n"


def test_no_process_of_the_build_outlives_its_stage(built: Checkout, tmp_path: Path) -> None:
    late = built.work("minixen", "patches", "lingering", "late")
    _write_patch(built, "lingering", tmp_path, _make_rule([f"setsid sh -c 'sleep 2; touch {late}' >/dev/null 2>&1 &",
                                                           "touch $@"]))
    assert _outcome(built, "lingering", _build(built, "lingering")) == "key absent"
    time.sleep(4)
    assert not late.exists()


def test_the_environment_holds_no_secret_and_no_key_path(built: Checkout, tmp_path: Path) -> None:
    _write_patch(built, "environment", tmp_path, _make_rule(["env | sort > $@", "cat $@"]))
    result = _build(built, "environment", env={"AWS_SECRET_ACCESS_KEY": "hunter2", "SSH_AUTH_SOCK": "/tmp/agent"})
    assert _outcome(built, "environment", result) == "key absent"
    log = built.work("minixen", "patches", "environment", "build.log").read_text()
    assert "PATH=" in log and "HOME=/tmp" in log
    for name in ("AWS_SECRET_ACCESS_KEY", "SSH_AUTH_SOCK", "XSPLICE_SIGNING_KEY", "XSPLICE_ROOT"):
        assert f"{name}=" not in log


# ---- the same patches with the sandbox off: each really reaches the key there ------------------------------

def test_without_the_sandbox_incbin_puts_the_key_in_the_payload_and_the_scan_refuses_it(
        built: Checkout, tmp_path: Path) -> None:
    _write_patch(built, "incbin-relative", tmp_path, ROUTES["incbin-relative"](built.root))
    result = _build(built, "incbin-relative", env=UNSAFE)
    assert sandbox.UNSANDBOXED_WARNING in result.stdout
    line = one_line_failure(result)
    assert re.search(r"FAILED sign:minixen/incbin-relative: work/minixen/patches/incbin-relative/"
                     r"incbin-relative.livepatch.unsigned: section \.text\.do_domctl\+0x[0-9a-f]+ \(file offset "
                     r"0x[0-9a-f]+\) holds a PEM private key block \(BEGIN PRIVATE KEY\)", line), line
    assert not built.out("incbin-relative").exists()
    unsigned = built.work("minixen", "patches", "incbin-relative", "incbin-relative.livepatch.unsigned")
    assert _key(built).read_bytes() in unsigned.read_bytes()  # what the sandbox keeps from happening


def test_without_the_sandbox_the_proc_scan_finds_the_key(built: Checkout, tmp_path: Path) -> None:
    _write_patch(built, "proc-pid", tmp_path, ROUTES["proc-pid"](built.root))
    with _key(built).open("rb"):
        result = _build(built, "proc-pid", env=UNSAFE)
    assert "holds a PEM private key block" in one_line_failure(result)


def test_without_the_sandbox_the_build_reaches_the_network_and_writes_outside(built: Checkout,
                                                                              tmp_path: Path) -> None:
    with _listener() as connections:
        _write_patch(built, "reach", tmp_path, _make_rule([
            f"python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {connections.port}), "
            "timeout=5).sendall(b\"x\")'", f"echo planted > {built.root}/out/planted", "touch $@"]))
        _build(built, "reach", env=UNSAFE)
        deadline = time.monotonic() + 5
        while connections.accepted == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert connections.accepted == 1
    assert (built.root / "out" / "planted").exists()


# ---- the sandbox's own refusals ----------------------------------------------------------------------------

def test_a_machine_without_a_sandbox_refuses_to_build_in_one_line(built: Checkout, tmp_path: Path) -> None:
    # A PATH on which bwrap is not found: the same as a machine without bubblewrap.
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("make", "gcc", "x86_64-linux-gnu-gcc", "as", "ld", "git", "sh", "cp", "python3", "openssl"):
        found = shutil.which(tool)
        if found:
            (tools / tool).symlink_to(found)
    built.doit("forget", "build-patched:minixen/XSA-131")
    result = _build(built, "XSA-131", env={"PATH": str(tools)})
    line = one_line_failure(result)
    assert "FAILED build-patched:minixen/XSA-131: the build sandbox cannot be created (bwrap: " in line, line
    assert "XSPLICE_UNSAFE_NO_SANDBOX=1 builds without it" in line


def test_a_signing_key_beside_the_checkout_is_refused(built: Checkout) -> None:
    # The key's directory holds the checkout: covering it would hide the tree from the build.
    key, certificate = built.root / "release.pem", built.root / "release-cert.pem"
    shutil.copy(_key(built), key)
    shutil.copy(built.root / "keys" / "development" / "signing_cert.pem", certificate)
    built.doit("forget", "build-patched:minixen/XSA-131")
    result = _build(built, "XSA-131", env={"XSPLICE_SIGNING_KEY": str(key), "XSPLICE_SIGNING_CERT": str(certificate)})
    line = one_line_failure(result)
    assert f"XSPLICE_SIGNING_KEY {key}: its directory {built.root} holds {built.root}" in line, line


def test_a_configured_key_directory_is_covered(built: Checkout, tmp_path: Path) -> None:
    # Inside the checkout (which builds see), so only the cover keeps it from them.
    keys = built.root / "release-keys"
    keys.mkdir(mode=0o700)
    shutil.copy(_key(built), keys / "key.pem")
    shutil.copy(built.root / "keys" / "development" / "signing_cert.pem", keys / "cert.pem")
    configured = {"XSPLICE_SIGNING_KEY": str(keys / "key.pem"), "XSPLICE_SIGNING_CERT": str(keys / "cert.pem")}
    development = sandbox.layout(Project(built.root), [built.work("minixen")]).covered
    os.environ.update(configured)
    try:
        covered = sandbox.layout(Project(built.root), [built.work("minixen")]).covered
    finally:
        for name in configured:
            del os.environ[name]
    assert development == (built.root / "keys",)
    assert covered == (built.root / "keys", keys)
    _write_patch(built, "configured", tmp_path, _incbin(str(keys / "key.pem")))
    result = _build(built, "configured", env=configured)
    assert "FAILED build-patched:minixen/configured: building minixen failed" in one_line_failure(result)
    assert _holding_key(built, result.stdout + result.stderr, _secrets(keys / "key.pem")) == []


def test_a_file_the_parent_reads_must_be_a_regular_file_inside_the_stage_directory(tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    stage.mkdir()
    (stage / "image").write_bytes(b"ELF")
    (tmp_path / "secret.pem").write_bytes(b"secret")
    (stage / "linked").symlink_to(tmp_path / "secret.pem")
    (stage / "inner").symlink_to(stage / "image")
    assert sandbox.owned_file(stage / "image", stage, "image") == stage / "image"
    for name in ("linked", "inner", "missing"):
        with pytest.raises(BuildError, match=f"^{stage / name}: the image is not a regular file inside {stage} "):
            sandbox.owned_file(stage / name, stage, "image")


# ---- the key-material scan ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def payload(built_once: Checkout) -> bytes:
    """A real unsigned payload (XSA-131), into which the tests write key material."""
    return built_once.work("minixen", "patches", "XSA-131", "XSA-131.livepatch.unsigned").read_bytes()


@pytest.fixture(scope="module")
def signing_key(built_once: Checkout) -> tuple[rsa.RSAPrivateKey, bytes]:
    pem = _key(built_once).read_bytes()
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key, pem


def _planted(payload: bytes, section: str, material: bytes) -> tuple[bytes, int]:
    """A relocatable ELF whose `section` is the payload's own code for it with `material` after it; and the
    file offset where the material starts."""
    from xsplice_build.elf.constants import SHF_ALLOC, SHF_EXECINSTR, SHT_PROGBITS
    from xsplice_build.elf.reader import read_elf
    from xsplice_build.elf.writer import OutSection, write_relocatable

    code = next(s for s in read_elf(payload, "payload").sections if s.name == section).data
    elf = write_relocatable([OutSection(section, SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, code + material, 16)], [])
    written = next(s for s in read_elf(elf, "planted").sections if s.name == section)
    return elf, written.offset + len(code)


def test_the_untouched_payload_has_no_key_material(payload: bytes,
                                                   signing_key: tuple[rsa.RSAPrivateKey, bytes]) -> None:
    assert find_key_material(payload, SigningKeyBytes.of(*signing_key)) is None


OTHER_KEYS: dict[str, Callable[[], bytes]] = {
    "pem-rsa-pkcs1": lambda: rsa.generate_private_key(65537, 1024).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()),
    "pem-ec": lambda: ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()),
    "pem-openssh": lambda: ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()),
    "der-pkcs1": lambda: rsa.generate_private_key(65537, 1024).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()),
    "der-pkcs8": lambda: rsa.generate_private_key(65537, 1024).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    "der-ec": lambda: ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()),
}
EXPECTED = {"pem-rsa-pkcs1": "a PEM private key block (BEGIN RSA PRIVATE KEY)",
            "pem-ec": "a PEM private key block (BEGIN EC PRIVATE KEY)",
            "pem-openssh": "a PEM private key block (BEGIN OPENSSH PRIVATE KEY)",
            "der-pkcs1": "a DER private key (RSA, PKCS#1, ", "der-pkcs8": "a DER private key (RSA, PKCS#8, ",
            "der-ec": "a DER private key (EC, SEC1, "}


@pytest.mark.parametrize("kind", list(OTHER_KEYS))
def test_the_scan_refuses_any_private_key_naming_section_and_offset(payload: bytes, kind: str) -> None:
    planted, offset = _planted(payload, ".text.do_domctl", OTHER_KEYS[kind]())
    with pytest.raises(PayloadRejected) as refused:
        refuse_key_material(planted, "P.livepatch.unsigned")
    message = refused.value.message
    assert message.startswith(f"P.livepatch.unsigned: section .text.do_domctl+0x190 (file offset {offset:#x}) "
                              f"holds {EXPECTED[kind]}"), message
    assert "\n" not in message


SIGNING_KEY_FORMS = ["key file", "DER (PKCS#8)", "private exponent (big-endian)", "private exponent (little-endian)",
                     "prime p (big-endian)", "modulus (big-endian)"]


@pytest.mark.parametrize("form", SIGNING_KEY_FORMS)
def test_the_scan_refuses_the_signing_keys_own_bytes_even_in_part(payload: bytes,
                                                                 signing_key: tuple[rsa.RSAPrivateKey, bytes],
                                                                 form: str) -> None:
    forms = dict(SigningKeyBytes.of(*signing_key).forms)
    # 70 bytes from the middle, without any PEM header or DER structure around them.
    fragment = forms[form][100:170] if len(forms[form]) > 170 else forms[form][20:90]
    planted, offset = _planted(payload, ".text.do_domctl", fragment)
    assert find_key_material(planted) is None  # no generic rule sees it: only the key's own bytes do
    finding = find_key_material(planted, SigningKeyBytes.of(*signing_key))
    assert finding is not None and offset <= finding.offset < offset + len(fragment)
    # DER is the numbers with a few bytes of structure between them: a piece of it is found as the number.
    named = "bytes of the signing key's " + ("" if form.startswith("DER") else form)
    assert named in finding.what, finding.what


def test_the_scan_names_a_file_offset_outside_sections(payload: bytes) -> None:
    material = OTHER_KEYS["pem-ec"]()
    with pytest.raises(PayloadRejected, match=r"^P: file offset 0x[0-9a-f]+ holds a PEM private key block"):
        refuse_key_material(payload + material, "P")
    assert keyscan.where(b"not an elf" + material, "P", 10) == "file offset 0xa"


def test_the_sign_stage_refuses_a_payload_with_key_material(built: Checkout) -> None:
    # As a cluster coordinator signs a payload a worker sent: the stage itself, on the file it is given.
    from xsplice_build.stages import steps as stages

    unsigned = built.work("minixen", "patches", "XSA-131", "XSA-131.livepatch.unsigned")
    planted, _ = _planted(unsigned.read_bytes(), ".text.do_domctl", OTHER_KEYS["der-pkcs8"]())
    unsigned.write_bytes(planted)
    shutil.rmtree(built.out("XSA-131"))
    with pytest.raises(PayloadRejected, match=r"section \.text\.do_domctl\+0x190 .* holds a DER private key "
                                              r"\(RSA, PKCS#8, "):
        stages.stage_sign(Project(built.root), "minixen", "XSA-131")
    assert not built.out("XSA-131").exists()


# ---- a listener on the host's loopback -------------------------------------------------------------------

class _Connections:
    def __init__(self) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen()
        self.server.settimeout(0.2)
        self.port = self.server.getsockname()[1]
        self.accepted = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                connection, _ = self.server.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            connection.close()

    def __enter__(self) -> _Connections:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.server.close()


def _listener() -> _Connections:
    return _Connections()


# ---- build-patched keeps its sandbox for the diff -------------------------------------------------------------

def _patched_then_diff(checkout: Checkout, fresh_diff: bool) -> bytes:
    from xsplice_build.stages import steps as stages

    project = Project(checkout.root)
    shutil.rmtree(checkout.work("minixen", "patches", "XSA-131"))
    stages.stage_build_patched(project, "minixen", "XSA-131")
    kept = list(sandbox._KEPT)
    assert [(name, json.loads(arguments)) for name, arguments, _view in kept] == [
        ("xsplice_build.stages.sandboxed_diff:diff_objects", {"baseline": "minixen", "patch": "XSA-131"})]
    if fresh_diff:
        sandbox._stop_all_kept()  # the diff then starts a sandbox of its own, as a diff rerun alone does
    stages.stage_diff(project, "minixen", "XSA-131")
    assert sandbox._KEPT == {}
    records = Records(project, "minixen", "XSA-131")
    return records.diff.read_bytes() + records.extract.read_bytes()


def test_the_diff_in_the_kept_build_sandbox_gives_what_a_sandbox_of_its_own_gives(built: Checkout) -> None:
    assert _patched_then_diff(built, fresh_diff=False) == _patched_then_diff(built, fresh_diff=True)
    # The diff's part is named for build-patched; the name is the diff stage's function.
    from xsplice_build.stages import sandboxed_diff
    from xsplice_build.stages import steps as stages

    assert stages._diff_part(Project(built.root), "minixen", "XSA-131").name == \
        sandbox.Part.of(sandboxed_diff.diff_objects, {}, ()).name


def test_at_most_two_sandboxes_wait_for_their_diffs_and_an_ended_one_starts_anew(built: Checkout) -> None:
    from xsplice_build.stages import steps as stages

    project = Project(built.root)
    patches = ["XSA-131", "inline-header", "string-literal"]
    for patch in patches:  # as a run that builds every pair before their diffs
        stages.stage_build_patched(project, "minixen", patch)
    assert [json.loads(arguments)["patch"] for _name, arguments, _view in sandbox._KEPT] == patches[1:]
    for patch in patches:  # XSA-131's sandbox was ended: its diff runs in one of its own
        stages.stage_diff(project, "minixen", patch)
        assert Records(project, "minixen", patch).diff.is_file()
    assert sandbox._KEPT == {}
