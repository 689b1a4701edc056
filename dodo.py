"""The pipeline's doit tasks: one generator per stage, a subtask per baseline or (baseline, patch).

`doit build-patch [--baseline NAME] PATCH` (xsplice_build.commands.doit_commands) runs the sign
subtask of one pair and everything it depends on; `doit list` shows the stages.
"""

from pathlib import Path

from xsplice_build.pipeline.tasks import Pipeline

PIPELINE = Pipeline(Path(__file__).resolve().parent)
DOIT_CONFIG = PIPELINE.doit_config()


def task_toolchain():
    return PIPELINE.toolchain()


def task_lock_toolchain():
    return PIPELINE.lock_toolchain()


def task_dev_keys():
    return PIPELINE.dev_keys()


def task_checkout():
    yield from PIPELINE.checkout()


def task_build_base():
    yield from PIPELINE.build_base()


def task_build_orig():
    yield from PIPELINE.build_orig()


def task_build_patched():
    yield from PIPELINE.build_patched()


def task_diff():
    yield from PIPELINE.diff()


def task_payload():
    yield from PIPELINE.payload()


def task_sign():
    yield from PIPELINE.sign()


def task_prove():
    yield from PIPELINE.prove()
