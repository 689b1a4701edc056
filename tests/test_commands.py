"""The console faces as a user meets them: short usage, options anywhere, paths, subdirectories, clean, exit codes."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from conftest import BIN, Checkout


def _doit(checkout: Checkout, *args: str, cwd: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "doit"), *args], cwd=checkout.root / cwd, capture_output=True, text=True,
                          check=False, timeout=600, env={k: v for k, v in os.environ.items() if k != "XSPLICE_ROOT"})


@pytest.mark.fast
@pytest.mark.parametrize("args", [["build-patch", "--help"], ["help", "build-patch"]])
def test_build_patch_help_is_its_own_short_usage(checkout: Checkout, args: list[str]) -> None:
    result = _doit(checkout, *args)
    assert result.returncode == 0
    assert result.stdout.startswith("usage: doit build-patch [--baseline NAME] [--image XEN-SYMS] PATCH")
    assert "--always-execute" not in result.stdout and "parallel-type" not in result.stdout  # not doit's dump
    assert len(result.stdout.splitlines()) < 15


@pytest.mark.fast
@pytest.mark.parametrize("command", ["build-patch", "nightly", "audit"])
def test_a_misspelled_option_names_it_and_shows_the_usage(checkout: Checkout, command: str) -> None:
    result = _doit(checkout, command, "--basline", "minixen")
    assert result.returncode == 2
    assert result.stderr.startswith("xsplice: error: option --basline not recognized\nusage: doit " + command)
    assert "CmdOption" not in result.stderr and "Traceback" not in result.stderr


@pytest.mark.fast
def test_a_patch_file_outside_patches_says_where_patches_live(checkout: Checkout, tmp_path) -> None:
    outside = tmp_path / "fix.patch"
    outside.write_text("diff --git a/x b/x\n")
    result = _doit(checkout, "build-patch", str(outside))
    assert result.returncode == 2
    assert f"{outside}: not a patch of this checkout; patches live in {checkout.root}/patches/NAME/BASELINE.patch" \
        in result.stderr


def test_options_after_the_patch_a_patch_path_and_a_subdirectory_all_work(built: Checkout) -> None:
    after = _doit(built, "build-patch", "XSA-131", "--baseline", "minixen-1.1", cwd="baseline")
    assert after.returncode == 0, after.stdout + after.stderr
    assert "payload out/minixen-1.1/XSA-131/XSA-131.livepatch" in after.stdout
    by_path = _doit(built, "build-patch", "../patches/regression-test/minixen.patch", cwd="patches")
    assert by_path.returncode == 0, by_path.stdout + by_path.stderr
    assert "payload out/minixen/regression-test/regression-test.livepatch" in by_path.stdout


def test_clean_removes_a_stage_outputs_and_dry_run_only_lists_them(built: Checkout) -> None:
    signed = built.out("XSA-131") / "XSA-131.livepatch"
    dry = _doit(built, "clean", "-n", "sign:minixen/XSA-131")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "out/minixen/XSA-131/XSA-131.livepatch" in dry.stdout and signed.is_file()
    assert _doit(built, "clean", "sign:minixen/XSA-131").returncode == 0
    assert not signed.exists()
    rebuilt = built.doit("build-patch", "XSA-131")
    assert "start sign:minixen/XSA-131" in rebuilt.stdout and "start payload" not in rebuilt.stdout


@pytest.mark.fast
def test_boot_of_an_unknown_baseline_says_so(checkout: Checkout) -> None:
    result = subprocess.run([str(BIN / "xen-xsplice"), "boot", "UNKNOWN"], cwd=checkout.root, capture_output=True,
                            text=True, check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("xen-xsplice: unknown baseline 'UNKNOWN'"), result.stderr


def test_verify_outside_a_checkout_takes_the_trusted_certificate_from_the_environment(built_once: Checkout,
                                                                                     tmp_path) -> None:
    payload = built_once.out("XSA-131") / "XSA-131.livepatch"
    image = built_once.work("minixen", "base", "tree", "xen-syms")
    env = {**os.environ, "XSPLICE_TRUSTED_CERT": str(built_once.root / "keys/development/signing_cert.pem")}
    env.pop("XSPLICE_ROOT", None)
    result = subprocess.run([str(BIN / "xsplice-build"), "verify", str(payload), "--image", str(image)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "verified against" in result.stdout


def test_diff_json_is_the_pipelines_explanation_with_its_base_image_references(built_once: Checkout) -> None:
    result = built_once.xsplice("diff", str(built_once.work("minixen", "orig", "tree", "common", "domctl.o")),
                                str(built_once.work("minixen", "patches", "XSA-131", "objects", "common",
                                                    "domctl.o.XSPLICE")), "--name", "common/domctl.o", "--json",
                                check=True)
    printed = json.loads(result.stdout)
    pipeline = json.loads(built_once.work("minixen", "patches", "XSA-131", "diff.explain.json").read_text())
    # bring_up needs the base image's callers and tables (stage_diff adds it); two objects alone cannot say.
    assert printed == {key: value for key, value in pipeline["objects"][0].items() if key != "bring_up"}
    assert printed["base_references"]  # resolved by extraction: once left empty here
