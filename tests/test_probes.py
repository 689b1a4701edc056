"""Probe files: strict loading, one-line refusals, and the bundled ones for every patch."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO

from xsplice_build.errors import ConfigError
from xsplice_build.project import Project
from xsplice_build.vm.probes import PHASES, load_probes, probe_file


def test_bundled_probes_load_and_cover_each_phase() -> None:
    project = Project(REPO)
    for patch in ("XSA-131", "regression-test"):
        probes = load_probes(probe_file(project, patch, "minixen"))
        assert probes and all(probe.expected[phase] for probe in probes for phase in PHASES)
    xsa = load_probes(probe_file(project, "XSA-131", "minixen"))[0]
    assert (xsa.request, xsa.expected) == ("domctl max_vcpus 0 64",
                                          {"before": ["= 0"], "applied": ["= -22"], "reverted": ["= 0"]})


@pytest.mark.parametrize(("text", "message"), [
    ('[[probe]]\nrequest = "info"\nbefore = []\napplied = []\n', "missing key 'reverted'"),
    ('[[probe]]\nrequest = "info"\nbefore = []\napplied = []\nreverted = []\nafter = []\n', "unknown key 'after'"),
    ('[[probe]]\nrequest = "info\\nquit"\nbefore = []\napplied = []\nreverted = []\n', "one non-empty line"),
    ('[[probe]]\nrequest = "info"\nbefore = [1]\napplied = []\nreverted = []\n', "must be a list of strings"),
    ("probe = []\n", "no [[probe]] tables"),
    ("[[probe]\n", "not valid TOML"),
])
def test_a_malformed_probe_file_is_refused_in_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "minixen.probe.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")) as caught:
        load_probes(path)
    assert str(path) in caught.value.message and "\n" not in caught.value.message
