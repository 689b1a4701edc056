"""The pipeline under hostile conditions: two builds at once, a failing patch, patches that reach out of
the tree or change nothing compiled, a loosely protected key; then a scan of everything a full run wrote
and printed for any byte of the private signing key."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import signal
import sqlite3
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import BIN, Checkout, copy_checkout, one_line_failure
from cryptography.hazmat.primitives import serialization

CANARY = "int canary = 1;\n"


@dataclass
class FullRun:
    checkout: Checkout
    outputs: dict[str, str] = field(default_factory=dict)
    concurrent: list[subprocess.CompletedProcess[str]] = field(default_factory=list)


def _popen_doit(checkout: Checkout, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([str(BIN / "doit"), *args], cwd=checkout.root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "XSPLICE_ROOT": str(checkout.root)})


def _failing_patch(checkout: Checkout) -> None:
    text = (checkout.root / "patches" / "XSA-131" / "minixen.patch").read_text()
    (checkout.root / "patches" / "broken").mkdir()
    (checkout.root / "patches" / "broken" / "minixen.patch").write_text(
        text.replace("case XEN_DOMCTL_max_vcpus:", "case XEN_DOMCTL_no_such_case:"))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> FullRun:
    """A cold checkout: two `build-patch XSA-131` started at once, then regression-test, a patch that
    fails, verify of both payloads and a xen-xsplice session; every line printed is kept."""
    run = FullRun(copy_checkout(tmp_path_factory.mktemp("full") / "checkout"))
    checkout = run.checkout
    _failing_patch(checkout)
    first, second = _popen_doit(checkout, "build-patch", "XSA-131"), _popen_doit(checkout, "build-patch", "XSA-131")
    for number, process in enumerate((first, second)):
        stdout, stderr = process.communicate(timeout=600)
        run.concurrent.append(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
        run.outputs[f"concurrent {number}"] = stdout + stderr
    for name, result in (
        ("regression-test", checkout.doit("build-patch", "regression-test", check=False)),
        ("broken", checkout.doit("build-patch", "broken", check=False)),
        ("rerun", checkout.doit("build-patch", "XSA-131", check=False)),
        *((f"verify {patch}", checkout.xsplice("verify", str(checkout.out(patch) / f"{patch}.livepatch"), "--image",
                                               str(checkout.work("minixen", "base", "tree", "xen-syms"))))
          for patch in ("XSA-131", "regression-test")),
    ):
        run.outputs[name] = result.stdout + result.stderr
    xen = [str(BIN / "xen-xsplice")]
    env = {**os.environ, "XSPLICE_ROOT": str(checkout.root)}
    payload = str(checkout.out("regression-test") / "regression-test.livepatch")
    for args in (["boot", "minixen"], ["upload", "regression-test", payload], ["apply", "regression-test"],
                 ["info"], ["revert", "regression-test"], ["unload", "regression-test"], ["shutdown"]):
        result = subprocess.run([*xen, *args], cwd=checkout.root, env=env, capture_output=True, text=True,
                                check=False, timeout=120)
        run.outputs[f"xen-xsplice {args[0]}"] = result.stdout + result.stderr
    return run


def test_two_builds_started_at_once_both_finish_and_the_database_is_whole(full_run: FullRun) -> None:
    first, second = full_run.concurrent
    assert first.returncode == 0 and second.returncode == 0, first.stdout + first.stderr + second.stdout + second.stderr
    assert "Traceback" not in first.stderr + second.stderr
    waited = [r for r in (first, second) if "waiting for another build in this checkout" in r.stdout]
    assert len(waited) == 1, first.stdout + second.stdout
    # The one that waited found the other's work done: it rebuilt nothing.
    after = waited[0].stdout.split("waiting for another build", 1)[1]
    assert set(re.findall(r"^xsplice: start (\S+)", after, re.MULTILINE)) == set(), after
    database = sqlite3.connect(full_run.checkout.work(".doit.db"))
    try:
        assert database.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        database.close()
    assert set(re.findall(r"^xsplice: start (\S+)", full_run.outputs["rerun"], re.MULTILINE)) == set()
    assert "xsplice: payload out/minixen/XSA-131/XSA-131.livepatch" in full_run.outputs["rerun"]


def test_a_build_that_waits_too_long_refuses_in_one_line(built: Checkout) -> None:
    lock = built.work(".lock")
    descriptor = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{os.getpid()}\n".encode())
        result = built.doit("build-patch", "XSA-131", check=False, env={"XSPLICE_LOCK_TIMEOUT": "1"})
    finally:
        os.close(descriptor)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [f"xsplice: error: {lock}: another build (pid {os.getpid()}) still "
                                          "holds the lock after 1 s; wait for it to finish, or stop it"]
    assert "xsplice: start" not in result.stdout


def test_a_failing_patch_leaves_no_file_at_its_output_path(full_run: FullRun) -> None:
    output = full_run.outputs["broken"]
    assert "FAILED build-patched:minixen/broken" in output and "Traceback" not in output
    assert not full_run.checkout.out("broken").exists()
    assert not list(full_run.checkout.root.glob("out/**/*.tmp*"))


def test_the_signing_key_is_private_and_outside_out(full_run: FullRun) -> None:
    keys = full_run.checkout.root / "keys" / "development"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    assert stat.S_IMODE((keys / "signing_key.pem").stat().st_mode) == 0o600
    assert (full_run.checkout.root / "out").resolve() not in keys.resolve().parents


def _secrets(key_path: Path) -> dict[str, bytes]:
    """Byte strings that only the private key holds, in the forms a leak could take."""
    pem = key_path.read_bytes()
    key = serialization.load_pem_private_key(pem, password=None)
    numbers = key.private_numbers()
    secrets: dict[str, bytes] = {}
    for name in ("d", "p", "q", "dmp1", "dmq1", "iqmp"):
        value = getattr(numbers, name)
        raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
        secrets[f"{name} (binary)"] = raw[:32]
        secrets[f"{name} (hex)"] = raw[:32].hex().encode()
        secrets[f"{name} (HEX)"] = raw[:32].hex().upper().encode()
        secrets[f"{name} (decimal)"] = str(value)[:40].encode()
    body = [line for line in pem.splitlines() if line and not line.startswith(b"-----")]
    # The PEM's body lines hold the DER: its private part is past the modulus (public), so every line
    # from the middle on is secret; the header lines are not checked.
    for number, line in enumerate(body[len(body) // 3:]):
        secrets[f"PEM line {number}"] = line
    der = base64.b64decode(b"".join(body))
    secrets["DER tail"] = der[-64:]
    # The scan would see a leak: each binary form is really in the key's DER.
    assert all(secret in der for what, secret in secrets.items() if what.endswith("(binary)"))
    return secrets


def _files_to_scan(root: Path) -> list[Path]:
    found = [*root.glob("out/**/*"), *root.glob("work/**/*.json"), *root.glob("work/**/*.log"),
             *root.glob("work/**/*.livepatch"), *root.glob("work/**/*.o"), *root.glob("work/**/*.XSPLICE"),
             *root.glob("work/run/*"), root / "work" / ".doit.db"]
    return sorted({path for path in found if path.is_file()})


def test_no_byte_of_the_private_key_is_written_or_printed(full_run: FullRun) -> None:
    root = full_run.checkout.root
    secrets = _secrets(root / "keys" / "development" / "signing_key.pem")
    files = _files_to_scan(root)
    names = {path.name for path in files}
    assert {"XSA-131.livepatch", "regression-test.livepatch", "report.json", "build.log", "payload.json"} <= names
    for path in files:
        data = path.read_bytes()
        for what, secret in secrets.items():
            assert secret not in data, f"{path} holds the private key's {what}"
    for name, text in full_run.outputs.items():
        for what, secret in secrets.items():
            assert secret not in text.encode(), f"the output of {name} holds the private key's {what}"
    assert "verified against" in full_run.outputs["verify XSA-131"]
    assert "xen_extra : -Hello_World" in full_run.outputs["xen-xsplice info"]


def test_a_key_others_can_read_draws_a_warning_in_the_build_output(built: Checkout) -> None:
    key = built.root / "keys" / "development" / "signing_key.pem"
    os.chmod(key, 0o644)
    result = built.doit("build-patch", "XSA-131")
    assert f"xsplice: warning: {key}: private key is readable by group or others (mode 644); chmod 600 it" in \
        result.stdout.splitlines()
    os.chmod(key, 0o600)
    assert "warning" not in built.doit("build-patch", "XSA-131").stdout


def _add_patch(checkout: Checkout, name: str, text: str) -> None:
    (checkout.root / "patches" / name).mkdir()
    (checkout.root / "patches" / name / "minixen.patch").write_text(text)


def test_a_patch_of_files_the_build_never_compiles_has_nothing_to_patch(built: Checkout) -> None:
    _add_patch(built, "notes", "Adds notes only.\n\ndiff --git a/NOTES b/NOTES\nnew file mode 100644\n--- /dev/null\n"
                               "+++ b/NOTES\n@@ -0,0 +1 @@\n+nothing compiled here\n")
    line = one_line_failure(built.doit("build-patch", "notes", check=False))
    assert "FAILED diff:minixen/notes: nothing to patch: the patch changes no compiled object" in line
    assert not built.out("notes").exists()


def test_a_patch_reaching_out_of_the_tree_writes_nothing_outside(built: Checkout, tmp_path: Path) -> None:
    canary = built.root.parent / "canary.c"
    canary.write_text(CANARY)
    # From the stage's tree (work/minixen/patched/N), enough ../ to reach the canary beside the checkout.
    path = "../" * 5 + "canary.c"
    _add_patch(built, "escape", f"diff --git a/{path} b/{path}\n--- a/{path}\n+++ b/{path}\n@@ -1 +1 @@\n"
                                f"-int canary = 1;\n+int canary = 2;\n")
    line = one_line_failure(built.doit("build-patch", "escape", check=False))
    assert re.search(r"FAILED build-patched:minixen/escape: .*escape/minixen.patch: touches '(\.\./)+canary.c', "
                     "outside the baseline's tree", line), line
    assert canary.read_text() == CANARY
    assert not built.out("escape").exists()


def test_a_symlinked_patch_file_is_refused(built: Checkout, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.patch"
    outside.write_text((built.root / "patches" / "XSA-131" / "minixen.patch").read_text())
    (built.root / "patches" / "linked").mkdir()
    (built.root / "patches" / "linked" / "minixen.patch").symlink_to(outside)
    line = one_line_failure(built.doit("build-patch", "linked", check=False))
    assert "patches/linked/minixen.patch: must be a regular file inside patches/" in line


def test_a_build_killed_midway_leaves_the_previous_payload_and_no_lock(built: Checkout) -> None:
    patch = built.root / "patches" / "XSA-131" / "minixen.patch"
    patch.write_text("An edited description: every stage from build-patched on runs again.\n" + patch.read_text())
    payload = built.out("XSA-131") / "XSA-131.livepatch"
    previous, report = payload.read_bytes(), (built.out("XSA-131") / "report.json").read_text()
    process = subprocess.Popen([str(BIN / "doit"), "build-patch", "XSA-131"], cwd=built.root, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                               env={**os.environ, "XSPLICE_ROOT": str(built.root), "PYTHONUNBUFFERED": "1"})
    assert process.stdout is not None
    seen = []
    for line in process.stdout:
        seen.append(line)
        if line.startswith("xsplice: start build-patched:minixen/XSA-131"):
            os.killpg(process.pid, signal.SIGKILL)
            break
    process.wait(timeout=60)
    process.stdout.close()
    assert process.returncode == -signal.SIGKILL, "".join(seen)
    # Killed at any point: the final paths hold the previous good outputs, whole.
    assert payload.read_bytes() == previous
    assert (built.out("XSA-131") / "report.json").read_text() == report
    # The kernel dropped the dead build's lock: the next build neither waits nor fails.
    rerun = built.doit("build-patch", "XSA-131", timeout=300)
    assert "waiting for another build" not in rerun.stdout
    assert built.report("XSA-131")["patch_sha256"] != json.loads(report)["patch_sha256"]


@pytest.mark.parametrize("name", ["../XSA-131", "..", "/etc/passwd", ".git", "XSA-131/../../keys", "a\nb", "-rf",
                                  "x" * 101, "XSA-131/"])
def test_a_patch_name_that_could_leave_patches_is_refused_before_use(checkout: Checkout, name: str) -> None:
    from xsplice_build.errors import ConfigError
    from xsplice_build.patches import patch_file
    from xsplice_build.project import Project
    from xsplice_build.vm.probes import probe_file

    project = Project(checkout.root)
    for use in (lambda: patch_file(project, name, "minixen"), lambda: probe_file(project, name, "minixen"),
                lambda: project.patch_out("minixen", name), lambda: project.patch_work("minixen", name)):
        with pytest.raises(ConfigError, match="is not allowed"):
            use()


def test_build_patch_refuses_a_hostile_patch_name_in_one_line(checkout: Checkout) -> None:
    line = one_line_failure(checkout.doit("build-patch", "../../keys/development", check=False))
    assert "patch name '../../keys/development' is not allowed" in line
    assert not (checkout.root / "out").exists()
