"""Fault injection for the interruption tests: freeze a pipeline process at a chosen point.

Put this directory on PYTHONPATH and set XSPLICE_TEST_PAUSE=FUNCTION:SUFFIX (FUNCTION is
"replace" for os.replace or "copy2" for shutil.copy2): the first call whose destination ends
with SUFFIX writes the file named by XSPLICE_TEST_PAUSED and then sleeps, so a test can
SIGKILL the run exactly mid-stage. Everything else runs for real.
"""

import os
import shutil
import time

_SPEC = os.environ.get("XSPLICE_TEST_PAUSE", "")


def _pausing(original, suffix):
    def call(source, destination, *args, **kwargs):
        if str(destination).endswith(suffix):
            with open(os.environ["XSPLICE_TEST_PAUSED"], "w") as marker:
                marker.write(str(destination))
            time.sleep(600)
        return original(source, destination, *args, **kwargs)

    return call


if ":" in _SPEC:
    _FUNCTION, _SUFFIX = _SPEC.split(":", 1)
    if _FUNCTION == "replace":
        os.replace = _pausing(os.replace, _SUFFIX)
    elif _FUNCTION == "copy2":
        shutil.copy2 = _pausing(shutil.copy2, _SUFFIX)
