"""Coverage-guided fuzzing (atheris/libFuzzer) of every reader of hostile input; prints the figures.

    .venv/bin/python benchmarks/fuzz.py [--seconds N] [--targets elf,verify,...] [--root CHECKOUT]

Each target runs in its own process for N seconds (default 60), seeded with real files of
a built checkout (default: this one; `doit build-patch XSA-131` and `regression-test` are
run first when their outputs are missing). A target may only return or raise an
XspliceError (a one-line refusal); anything else is a crash, an input that runs longer
than --timeout seconds is a hang, and more than --rss-mb of memory is a crash too.
Inputs that crash are kept under work/fuzz/artifacts/; each becomes a regression test.

Targets:
    elf      elf.reader.read_elf on objects (original and patched) and unsigned payloads
    verify   verify.link_payload (every loader rule) on unsigned payloads against the real image
    split    sign.split, the module-signature trailer alone, on signed payloads (fast)
    sign     sign.verify (split of the trailer, then openssl cms -verify) on signed payloads
    diff     the diff engine (passes 1-4, then extraction) on a real original object and a
             mutated patched object
    toml     the baseline definition, probe file and toolchain lock loaders on TOML bytes
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGETS = ("elf", "verify", "split", "sign", "diff", "toml")


@dataclass
class Outcome:
    target: str
    executions: int
    coverage: int
    features: int
    crashes: int
    hangs: int
    rate: int
    rc: int


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60, help="fuzzing time per target")
    parser.add_argument("--runs", type=int, default=0,
                        help="stop each target after this many inputs instead (a fixed amount of work, for tests)")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--root", type=Path, default=REPO, help="a checkout whose work/ and out/ give the seeds")
    parser.add_argument("--work", type=Path, help="corpus and artifacts (default ROOT/work/fuzz)")
    parser.add_argument("--timeout", type=int, default=10, help="seconds one input may take before it is a hang")
    parser.add_argument("--rss-mb", type=int, default=2048, help="memory limit of a target process")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    arguments, rest = parser.parse_known_args(argv)
    if arguments.child:
        return run_child(arguments.child, arguments.root.resolve(), rest)
    root = arguments.root.resolve()
    ensure_built(root)
    work = (arguments.work or root / "work" / "fuzz").resolve()
    outcomes = [fuzz(target, root, work, arguments.seconds, arguments.timeout, arguments.rss_mb, arguments.runs)
                for target in arguments.targets.split(",")]
    print_table(outcomes)
    return 0 if all(o.crashes == 0 and o.hangs == 0 and o.rc == 0 for o in outcomes) else 1


def ensure_built(root: Path) -> None:
    for patch in ("XSA-131", "regression-test"):
        if not (root / "out" / "minixen" / patch / f"{patch}.livepatch").is_file():
            subprocess.run([str(Path(sys.executable).parent / "doit"), "build-patch", patch], cwd=root,
                           env={**os.environ, "XSPLICE_ROOT": str(root)}, check=True)


def fuzz(target: str, root: Path, work: Path, seconds: int, timeout: int, rss_mb: int, runs: int = 0) -> Outcome:
    """Run one target for `seconds` (or `runs` inputs) in a child process and read libFuzzer's figures."""
    corpus, artifacts = work / "corpus" / target, work / "artifacts" / target
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    for seed in seeds(target, root):
        shutil.copyfile(seed, corpus / f"seed-{seed.parent.name}-{seed.name}")
    before = set(artifacts.iterdir())
    command = [sys.executable, str(Path(__file__).resolve()), "--child", target, "--root", str(root),
               str(corpus), f"-runs={runs}" if runs else f"-max_total_time={seconds}", f"-timeout={timeout}",
               f"-rss_limit_mb={rss_mb}",
               f"-artifact_prefix={artifacts}/", "-print_final_stats=1"]
    result = subprocess.run(command, capture_output=True, text=True, check=False,
                            timeout=(seconds if not runs else 0) + 600)
    log = result.stdout + result.stderr
    (work / f"{target}.log").write_text(log)
    new = [path.name for path in set(artifacts.iterdir()) - before]
    return Outcome(target=target, executions=_last_int(r"stat::number_of_executed_units: (\d+)", log),
                   coverage=_last_int(r"cov: (\d+)", log), features=_last_int(r"ft: (\d+)", log),
                   crashes=sum(not name.startswith("timeout-") for name in new),
                   hangs=sum(name.startswith("timeout-") for name in new),
                   rate=_last_int(r"stat::average_exec_per_sec:\s+(\d+)", log), rc=result.returncode)


def seeds(target: str, root: Path) -> list[Path]:
    """Real files of a built checkout: objects, payloads, definitions."""
    work, out = root / "work" / "minixen", root / "out" / "minixen"
    payloads = sorted(out.glob("*/*.livepatch"))
    if target == "elf":
        return [*sorted(work.glob("patches/*/objects/**/*.o.XSPLICE")), *payloads,
                *sorted(work.glob("orig/tree/**/*.o"))[:12]]
    if target in ("verify", "split", "sign"):
        return payloads
    if target == "diff":
        return sorted(work.glob("patches/*/objects/**/*.o.XSPLICE"))
    return [*sorted((root / "baseline").glob("*.toml")), *sorted((root / "patches").glob("*/*.probe.toml")),
            root / "toolchain.lock"]


def _last_int(pattern: str, text: str) -> int:
    found = re.findall(pattern, text)
    return int(found[-1]) if found else 0


def print_table(outcomes: list[Outcome]) -> None:
    print(f"{'target':<8} {'executions':>11} {'exec/s':>7} {'coverage':>9} {'features':>9} {'crashes':>8} "
          f"{'hangs':>6}")
    for o in outcomes:
        print(f"{o.target:<8} {o.executions:>11} {o.rate:>7} {o.coverage:>9} {o.features:>9} {o.crashes:>8} "
              f"{o.hangs:>6}")
    print(f"{'total':<8} {sum(o.executions for o in outcomes):>11} {'':>7} "
          f"{sum(o.coverage for o in outcomes):>9} {'':>9} {sum(o.crashes for o in outcomes):>8} "
          f"{sum(o.hangs for o in outcomes):>6}")
    print("coverage: libFuzzer's edge count ('cov') in xsplice_build's own code, per target")


# --- the child: one target under atheris ------------------------------------------------------------------


def run_child(target: str, root: Path, libfuzzer_args: list[str]) -> int:
    import atheris

    with atheris.instrument_imports(include=["xsplice_build"]):
        one_input = TARGET_SETUP[target](root)
    from xsplice_build.errors import XspliceError

    def test_one_input(data: bytes) -> None:
        try:
            one_input(data)
        except XspliceError as error:
            # One printable line: no newline, no control character, nothing a terminal cannot encode.
            if not error.message.isprintable() or not error.message.strip():
                raise AssertionError(f"refusal is not one printable line: {error.message!r}") from None

    atheris.Setup([sys.argv[0], *libfuzzer_args], test_one_input)
    atheris.Fuzz()
    return 0


def _elf_target(root: Path) -> Callable[[bytes], None]:
    from xsplice_build.elf.reader import read_elf

    return lambda data: read_elf(data, "fuzz.o") and None


def _verify_target(root: Path) -> Callable[[bytes], None]:
    from xsplice_build.diff.profile import XEN_X86_64
    from xsplice_build.image import BaseImage
    from xsplice_build.layout import apply_layout, baseline_layout, func_layout
    from xsplice_build.verify import link_payload, payload_area

    image_path = root / "work" / "minixen" / "base" / "tree" / "xen-syms"
    image = BaseImage.load(image_path)
    layout = baseline_layout(image_path, XEN_X86_64)
    profile = apply_layout(XEN_X86_64, layout)
    func = func_layout(layout, profile.livepatch_payload_version)
    base = payload_area(image)

    def one_input(data: bytes) -> None:
        # Signed seeds are fuzzed past their trailer: the loader rules see what the signature covers.
        end = data.rfind(b"~Module signature appended~")
        link_payload(data[:end] if end > 0 else data, "fuzz.livepatch", image, base=base, layout=func,
                     profile=profile)

    return one_input


def _sign_target(root: Path) -> Callable[[bytes], None]:
    from xsplice_build import sign

    certificate = root / "keys" / "development" / "signing_cert.pem"
    return lambda data: sign.verify(data, certificate, "fuzz.livepatch") and None


def _split_target(root: Path) -> Callable[[bytes], None]:
    from xsplice_build import sign

    return lambda data: sign.split(data, "fuzz.livepatch") and None


def _diff_target(root: Path) -> Callable[[bytes], None]:
    from xsplice_build.diff.engine import diff_elves
    from xsplice_build.diff.extract import Extract
    from xsplice_build.diff.profile import XEN_X86_64
    from xsplice_build.elf.reader import read_elf, read_elf_file

    patches = root / "work" / "minixen" / "patches" / "XSA-131" / "objects"
    patched = sorted(patches.glob("**/*.o.XSPLICE"))[0]
    original_elf = read_elf_file(root / "work" / "minixen" / "orig" / "tree" /
                                 str(patched.relative_to(patches)).removesuffix(".XSPLICE"))

    def one_input(data: bytes) -> None:
        diff = diff_elves(original_elf, read_elf(data, "fuzz.o"), "fuzz.o", XEN_X86_64)
        if not diff.refusals:
            extract = Extract()
            extract.add(diff)
            extract.finish()

    return one_input


def _toml_target(root: Path) -> Callable[[bytes], None]:
    from xsplice_build.baseline import load_baseline
    from xsplice_build.errors import XspliceError
    from xsplice_build.probes import load_probes
    from xsplice_build.project import Project
    from xsplice_build.toolchain import read_lock

    # A checkout-shaped directory of its own, under the checkout's work/ (never its baseline/).
    scratch = root / "work" / "fuzz" / "toml-scratch"
    (scratch / "baseline").mkdir(parents=True, exist_ok=True)
    project = Project(scratch)
    path = scratch / "baseline" / "fuzz.toml"

    def one_input(data: bytes) -> None:
        path.write_bytes(data)
        for load in (lambda: load_baseline(project, "fuzz"), lambda: load_probes(path), lambda: read_lock(path)):
            with contextlib.suppress(XspliceError):
                load()

    return one_input


TARGET_SETUP: dict[str, Callable[[Path], Callable[[bytes], None]]] = {
    "elf": _elf_target, "verify": _verify_target, "split": _split_target, "sign": _sign_target, "diff": _diff_target,
    "toml": _toml_target}


if __name__ == "__main__":
    sys.exit(main())
