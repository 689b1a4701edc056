"""A stage's code identity is computed from the sources: change a module, exactly the stages that run it rerun."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Checkout

from xsplice_build import code_identity
from xsplice_build.code_identity import PACKAGE_DIR, identities, stage_identity, stage_modules, stages

PAIR_STAGES = {"checkout", "build_base", "build_orig", "build_patched", "diff", "payload", "sign"}


@pytest.mark.fast
def test_every_stage_of_the_pipeline_is_found() -> None:
    assert set(stages()) >= PAIR_STAGES


@pytest.mark.fast
def test_the_code_a_hand_kept_list_missed_is_part_of_the_stages_that_run_it() -> None:
    # The payload stage once had no layout.py (func_layout) in its list, and kept a payload built by old code.
    runs = {stage: set(stage_modules(stage)) for stage in stages()}
    # (The diff record's entries the payload reads are declared in records.py, not in diff/extract.py.)
    assert {"target/layout.py", "stages/payload.py", "target/image.py", "diff/profile.py",
            "records.py"} <= runs["payload"]
    assert "diff/extract.py" in runs["diff"]
    assert {"target/layout.py", "stages/build.py", "data/xsplice-cc", "stages/patch_rules.py"} <= runs["build_base"]
    assert {"stages/patch_rules.py", "patches.py"} <= runs["build_patched"]
    assert "stages/steps.py" in runs["sign"]
    # and what a stage does not run is not part of it: signing never reruns a build
    assert "stages/sign.py" not in runs["build_base"] | runs["diff"] | runs["payload"]
    assert "diff/engine.py" not in runs["payload"] | runs["build_orig"]
    assert not {"pipeline/tasks.py", "commands/cli.py", "runtime/verify.py"} & set().union(*runs.values())


@pytest.mark.fast
def test_the_computed_closure_holds_every_module_python_loads() -> None:
    # Python's own import system is the reference: importing what a stage reaches loads nothing outside it
    # (stages/steps.py itself counts by the functions the stage reaches, so it is not imported whole here).
    for stage in sorted(PAIR_STAGES):
        listed = stage_modules(stage)
        modules = [name.removesuffix(".py").removesuffix("/__init__").replace("/", ".") for name in listed
                   if name.endswith(".py") and name != "stages/steps.py"]
        script = ("import json, sys\n"
                  f"for name in {modules!r}:\n"
                  "    __import__('xsplice_build.' + name if name != '__init__' else 'xsplice_build')\n"
                  "print(json.dumps(sorted(m for m in sys.modules if m.startswith('xsplice_build'))))\n")
        loaded = json.loads(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                           check=True, cwd="/").stdout)
        as_files = {_file_of(module) for module in loaded}
        assert as_files <= set(listed), (stage, as_files - set(listed))


def _file_of(module: str) -> str:
    name = module.removeprefix("xsplice_build").removeprefix(".").replace(".", "/")
    if not name:
        return "__init__.py"
    return f"{name}/__init__.py" if (PACKAGE_DIR / name / "__init__.py").is_file() else f"{name}.py"


@pytest.mark.fast
def test_changing_each_module_changes_exactly_the_stages_that_run_it(tmp_path: Path) -> None:
    package = tmp_path / "xsplice_build"
    shutil.copytree(PACKAGE_DIR, package, ignore=shutil.ignore_patterns("__pycache__"))
    before = identities(package)
    runs = {stage: set(stage_modules(stage, package)) for stage in before}
    files = sorted(path.relative_to(package).as_posix() for path in package.rglob("*") if path.is_file())
    for name in files:
        if name == "stages/steps.py":
            continue  # by function, below
        path = package / name
        original = path.read_bytes()
        path.write_bytes(original + b"\n# changed\n")
        after = identities(package)
        changed = {stage for stage in before if after[stage] != before[stage]}
        path.write_bytes(original)
        assert changed == {stage for stage, modules in runs.items() if name in modules}, name


@pytest.mark.fast
def test_changing_one_stage_function_changes_that_stage_only(tmp_path: Path) -> None:
    package = tmp_path / "xsplice_build"
    shutil.copytree(PACKAGE_DIR, package, ignore=shutil.ignore_patterns("__pycache__"))
    before = {stage: stage_identity(stage, package) for stage in stages(package)}
    runner = package / "stages" / "steps.py"
    text = runner.read_text()
    runner.write_text(text.replace("def stage_payload(", "def stage_payload(  # changed\n        ", 1))
    assert {stage for stage in before if stage_identity(stage, package) != before[stage]} == {"payload"}
    # a helper shared by the builds (the image trust check) belongs to build_base only
    runner.write_text(text.replace("def _trusted_image(", "def _trusted_image(  # changed\n        ", 1))
    assert {stage for stage in before if stage_identity(stage, package) != before[stage]} == {"build_base"}


@pytest.mark.fast
def test_the_payload_store_and_the_cluster_gate_use_the_same_identities() -> None:
    from xsplice_build.release import payload_store

    first = payload_store.stages_code()
    code_identity.identity.cache_clear()
    assert payload_store.stages_code() == first


def test_a_changed_module_reruns_exactly_its_stages(built: Checkout, tmp_path: Path) -> None:
    # The whole pipeline, with a copy of this package whose payload.py changed: only the payload stage reruns
    # (its bytes are the same, so signing stays up to date); before, the builds and the diff stayed cached too.
    package = tmp_path / "code" / "xsplice_build"
    shutil.copytree(PACKAGE_DIR, package, ignore=shutil.ignore_patterns("__pycache__"))
    (package / "stages" / "payload.py").write_bytes((package / "stages" / "payload.py").read_bytes() + b"\n# changed\n")
    env = {"PYTHONPATH": str(package.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = built.doit("build-patch", "XSA-131", env=env)
    # sign reruns too, by design: its provenance statement names the whole package's code (provenance.py).
    # The toolchain is probed again only when the lock, its record, PATH or a binary changed (tasks.py).
    assert set(started(result.stdout)) - SIGNING == {"payload:minixen/XSA-131"}, result.stdout
    (package / "target" / "layout.py").write_bytes((package / "target" / "layout.py").read_bytes() + b"\n# changed\n")
    result = built.doit("build-patch", "XSA-131", env=env)
    # layout.py is read by the builds (the debug compiles' records), the diff and the payload, not by checkout.
    assert set(started(result.stdout)) - SIGNING == {"build-base:minixen", "build-orig:minixen",
                                                     "build-patched:minixen/XSA-131", "diff:minixen/XSA-131",
                                                     "payload:minixen/XSA-131"}, result.stdout


SIGNING = {"sign:minixen/XSA-131"}


def started(output: str) -> list[str]:
    return [line.split()[2] for line in output.splitlines() if line.startswith("xsplice: start ")]
