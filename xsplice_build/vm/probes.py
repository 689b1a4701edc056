"""Probes (patches/NAME/BASELINE.probe.toml): what a running image answers before a payload is
applied, while it is applied and after it is reverted; each expected line must be in the answer.

For minixen a request is one of its request lines; for a real-Xen baseline it is a command line
run in the VM's dom0 (its output lines, then "= rc" as with minixen)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..errors import ConfigError, PayloadRejected
from ..project import Project, check_name
from ..schema import Field, check_string_list, check_table, load_toml
from .channel import Answer

PHASES = ("before", "applied", "reverted")
_PROBE = {"request": Field(str, True, "the request line sent to the running image"),
          **{phase: Field(list, True, f"answer lines expected {phase}") for phase in PHASES}}


class Requests(Protocol):
    """Whatever answers a probe's request: minixen's socket, or a dom0 shell in the real-Xen VM."""

    def request(self, line: str) -> Answer: ...


@dataclass(frozen=True)
class Probe:
    request: str
    expected: dict[str, list[str]]


def probe_file(project: Project, patch: str, baseline: str) -> Path:
    return project.patches_dir / check_name("patch", patch) / f"{check_name('baseline', baseline)}.probe.toml"


def load_probes(path: Path) -> list[Probe]:
    document = load_toml(path)
    check_table(path, "", document, {"probe": Field(list, True, "the [[probe]] tables")})
    probes = []
    for number, table in enumerate(document["probe"]):
        where = f"probe {number}"
        checked = check_table(path, where, table, _PROBE)
        if "\n" in checked["request"] or not checked["request"].strip():
            raise ConfigError(f"{path}: [{where}] request must be one non-empty line")
        expected = {phase: check_string_list(path, where, phase, checked[phase]) for phase in PHASES}
        probes.append(Probe(checked["request"], expected))
    if not probes:
        raise ConfigError(f"{path}: no [[probe]] tables")
    return probes


def check_phase(connection: Requests, probes: list[Probe], phase: str, patch: str) -> None:
    """Send every probe's request; refuse on the first answer that lacks an expected line."""
    for probe in probes:
        answer = connection.request(probe.request)
        lines = [*answer.lines, f"= {answer.rc}"]
        missing = [line for line in probe.expected[phase] if line not in lines]
        if missing:
            raise PayloadRejected(f"{patch}: probe {probe.request!r} {phase}: expected {missing[0]!r}, the image "
                                  f"answered {' | '.join(lines)}")
