"""Task wiring: each stage declares every record it reads, so any order doit picks (-n 2) is a valid one."""

from __future__ import annotations

import importlib.util
import inspect
import os
from pathlib import Path
from typing import Any

from conftest import Checkout


def test_each_pair_stage_runs_alone_from_its_declared_dependencies(checkout: Checkout) -> None:
    # Selecting one stage runs only what its file_dep names: a record read but not declared is missing here
    # (the diff stage reads base.json; a parallel nightly once ran it before build-base).
    for stage in ("diff", "payload", "sign"):
        result = checkout.doit(f"{stage}:minixen-1.1/XSA-131")
        assert "FAILED" not in result.stdout
    assert (checkout.out("XSA-131", "minixen-1.1") / "XSA-131.livepatch").is_file()


def test_no_two_tasks_write_the_same_file(checkout: Checkout) -> None:
    # What makes `doit -n 2 nightly` safe: each file has one writer (doit keeps its database in the main process).
    tasks = _task_dicts(checkout.root)
    writers: dict[str, list[str]] = {}
    for task in tasks:
        for target in task.get("targets", []):
            writers.setdefault(target, []).append(f"{task['basename']}:{task.get('name')}")
    assert len(writers) > 30
    assert {target: names for target, names in writers.items() if len(names) > 1} == {}



def _task_dicts(root: Path) -> list[dict[str, Any]]:
    """Load the checkout's dodo.py as doit does and list its task dictionaries."""
    spec = importlib.util.spec_from_file_location(f"dodo_{abs(hash(root))}", root / "dodo.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    previous = os.getcwd()
    os.chdir(root)
    try:
        spec.loader.exec_module(module)
        found = []
        for name, creator in inspect.getmembers(module, inspect.isfunction):
            if not name.startswith("task_"):
                continue
            made = creator()
            for task in made if inspect.isgenerator(made) else [made]:
                found.append({"basename": task.get("basename", name[5:]), **task})
        return found
    finally:
        os.chdir(previous)


def test_a_supplied_image_reaches_build_base_as_an_argument_never_through_the_environment(checkout: Checkout,
                                                                                          tmp_path: Path) -> None:
    from xsplice_build.pipeline.tasks import Pipeline, plan_only

    image = tmp_path / "xen-syms"
    image.write_bytes(b"the image a user runs")
    before = dict(os.environ)
    try:
        plan_only("minixen", ["XSA-131"], image)
        supplied = [task for task in Pipeline(checkout.root).build_base() if task.get("name") == "minixen"]
        plan_only("minixen", ["XSA-131"])
        rebuilt = [task for task in Pipeline(checkout.root).build_base() if task.get("name") == "minixen"]
    finally:
        plan_only("", [])
    (_, _, arguments), = supplied[0]["actions"]
    assert arguments["image"] == str(image) and "image" not in rebuilt[0]["actions"][0][2]
    assert dict(os.environ) == before  # nothing is handed on through the environment
    # Another image (or none) is another build-base: the task's saved config differs.
    assert supplied[0]["uptodate"][0].config != rebuilt[0]["uptodate"][0].config
