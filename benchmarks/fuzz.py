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
    protocol the request protocol against a running minixen: fuzzed names and upload bodies
             through the client (vm/channel.py's Connection), and raw bytes on a connection of their
             own; the image must keep running and answer in step (a body never read as requests)
    loader   minixen's loader on mutated payloads that pass `verify` (verify.link_payload), re-signed
             with the development key: upload, apply, list, revert and unload on a running image,
             which must never die (a crash is a finding; a refusal by the loader is counted)
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
TARGETS = ("elf", "verify", "split", "sign", "diff", "toml", "protocol", "loader")


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
    # Always asked (a no-op when up to date): a payload built for an older image would seed nothing that verifies.
    for patch in ("XSA-131", "regression-test"):
        subprocess.run([str(Path(sys.executable).parent / "doit"), "build-patch", patch], cwd=root,
                       env={**os.environ, "XSPLICE_ROOT": str(root)}, check=True, stdout=subprocess.DEVNULL)


def fuzz(target: str, root: Path, work: Path, seconds: int, timeout: int, rss_mb: int, runs: int = 0) -> Outcome:
    """Run one target for `seconds` (or `runs` inputs) in a child process and read libFuzzer's figures."""
    corpus, artifacts = work / "corpus" / target, work / "artifacts" / target
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    for seed in seeds(target, root):
        shutil.copyfile(seed, corpus / f"seed-{seed.parent.name}-{seed.name}")
    for number, data in enumerate(INLINE_SEEDS.get(target, ())):
        (corpus / f"seed-inline-{number}").write_bytes(data)
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
    if target in ("verify", "split", "sign", "protocol", "loader"):
        return payloads
    if target == "diff":
        return sorted(work.glob("patches/*/objects/**/*.o.XSPLICE"))
    return [*sorted((root / "baseline").glob("*.toml")), *sorted((root / "patches").glob("*/*.probe.toml")),
            root / "toolchain.lock"]


# Seeds no file of a build holds: conversations with the image (raw ones start with "R").
INLINE_SEEDS = {"protocol": (b"Rinfo\nlivepatch list\n", b"Rlivepatch upload a b 3\nabcinfo\n",
                             b"Rlivepatch get a\0quit\n", b"Rdomctl max_vcpus 0 64\nevtchn 1 2\n",
                             b"\x00\x07XSA-131\x7fELF")}


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

    mutator = CUSTOM_MUTATORS.get(target)
    if mutator:
        atheris.Setup([sys.argv[0], *libfuzzer_args], test_one_input, custom_mutator=mutator)
    else:
        atheris.Setup([sys.argv[0], *libfuzzer_args], test_one_input)
    atheris.Fuzz()
    return 0


# Elf64_Shdr fields a loader acts on: (offset in the header, width).
_SECTION_FIELDS = ((4, 4), (8, 8), (16, 8), (32, 8), (40, 4), (44, 4), (48, 8), (56, 8))


def _elf_field_mutator(data: bytes, max_size: int, seed: int) -> bytes:
    """Half of the mutations change one field of a section header or one word of a section's bytes (a flag
    bit, a type, a size, an entry of .livepatch.funcs), so that payloads still verify but differ where a
    loader decides; the other half are libFuzzer's own."""
    import random
    import struct

    import atheris

    rng = random.Random(seed)
    if rng.random() < 0.5 or len(data) < 64:
        return atheris.Mutate(data, max_size)
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    (shnum,) = struct.unpack_from("<H", data, 0x3C)
    if shnum < 2 or shoff + shnum * 64 > len(data):
        return atheris.Mutate(data, max_size)
    out = bytearray(data)
    header = shoff + rng.randrange(1, shnum) * 64
    if rng.random() < 0.5:
        offset, width = rng.choice(_SECTION_FIELDS)
        position = header + offset
    else:  # a word of the section's own bytes
        section_offset, size = struct.unpack_from("<QQ", data, header + 24)
        width = rng.choice((1, 4, 8))
        if size < width or section_offset + size > len(data):
            return atheris.Mutate(data, max_size)
        position = section_offset + rng.randrange(0, size - width + 1) & ~(width - 1)
    value = int.from_bytes(out[position:position + width], "little")
    value = rng.choice((value ^ (1 << rng.randrange(min(12, width * 8))), value + rng.choice((-1, 1, 8, -8)),
                        rng.randrange(0, 64), value ^ (1 << rng.randrange(width * 8))))
    out[position:position + width] = (value % (1 << (width * 8))).to_bytes(width, "little")
    return bytes(out)


CUSTOM_MUTATORS = {"loader": _elf_field_mutator}


def _elf_target(root: Path) -> Callable[[bytes], None]:
    from xsplice_build.elf.reader import read_elf

    return lambda data: read_elf(data, "fuzz.o") and None


def _minixen_verifier(root: Path) -> Callable[[bytes], bytes]:
    """Xen's loader rules offline against the built minixen image: returns the unsigned part it linked
    (signed seeds are fuzzed past their trailer: the rules see what the signature covers), or raises."""
    from xsplice_build.diff.profile import XEN_X86_64
    from xsplice_build.runtime.verify import link_payload, payload_area
    from xsplice_build.target.image import BaseImage
    from xsplice_build.target.layout import apply_layout, baseline_layout, func_layout

    image_path = root / "work" / "minixen" / "base" / "tree" / "xen-syms"
    image = BaseImage.load(image_path)
    layout = baseline_layout(image_path, XEN_X86_64)
    profile = apply_layout(XEN_X86_64, layout)
    func = func_layout(layout, profile.livepatch_payload_version)
    base = payload_area(image)

    def verified(data: bytes) -> bytes:
        end = data.rfind(b"~Module signature appended~")
        unsigned = data[:end] if end > 0 else data
        link_payload(unsigned, "fuzz.livepatch", image, base=base, layout=func, profile=profile)
        return unsigned

    return verified


def _verify_target(root: Path) -> Callable[[bytes], None]:
    verified = _minixen_verifier(root)
    return lambda data: verified(data) and None


def _sign_target(root: Path) -> Callable[[bytes], None]:
    from xsplice_build.stages import sign

    certificate = root / "keys" / "development" / "signing_cert.pem"
    return lambda data: sign.verify(data, certificate, "fuzz.livepatch") and None


def _split_target(root: Path) -> Callable[[bytes], None]:
    from xsplice_build.stages import sign

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
    from xsplice_build.errors import XspliceError
    from xsplice_build.project import Project
    from xsplice_build.stages.toolchain import read_lock
    from xsplice_build.target.baseline import load_baseline
    from xsplice_build.vm.probes import load_probes

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


class RunningImage:
    """minixen's base image on a socket of its own, for one fuzzing process (killed when that process dies)."""

    def __init__(self, root: Path) -> None:
        import tempfile

        self.image = root / "work" / "minixen" / "base" / "tree" / "xen-syms"
        self.directory = Path(tempfile.mkdtemp(prefix="xsplice-fuzz-"))  # short: a socket path is <= 107 bytes
        self.socket = self.directory / "hv.sock"
        self.process: subprocess.Popen[bytes] | None = None  # started on first use: a replay may never need it

    def ensure(self) -> None:
        if self.process is None:
            self.start()

    def start(self) -> None:
        import ctypes
        import signal
        import socket
        import time

        def die_with_parent() -> None:
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: libFuzzer exits without atexit

        self.socket.unlink(missing_ok=True)
        with (self.directory / "console.log").open("ab") as log:
            self.process = subprocess.Popen([str(self.image), "--socket", str(self.socket)], stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=log, preexec_fn=die_with_parent)
        for _ in range(500):
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.connect(str(self.socket))
                return
            time.sleep(0.01)
        raise RuntimeError(f"{self.image} did not open {self.socket}")

    def restart(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
        self.start()

    def check_alive(self, what: str) -> None:
        """A crash is the finding: the image died by a signal or with a status of its own."""
        if self.process is None:
            return
        status = self.process.poll()
        if status is not None:
            raise AssertionError(f"minixen died ({_status(status)}) {what}")

    def connect(self):  # type: ignore[no-untyped-def]
        import socket

        from xsplice_build.vm.channel import Connection

        self.ensure()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(self.socket))  # blocking: a timeout would make a full backlog EAGAIN
        sock.settimeout(10)
        return Connection(sock)


def _status(status: int) -> str:
    import signal

    return f"signal {signal.Signals(-status).name}" if status < 0 else f"exit status {status}"


def _protocol_target(root: Path) -> Callable[[bytes], None]:
    import atheris

    from xsplice_build.vm.channel import HypervisorError

    image = RunningImage(root)
    build_id = _answer_value(image, "build_id")
    operations = ("upload", "get", "apply", "revert", "unload", "list")

    def raw(data: bytes) -> None:
        import socket

        image.ensure()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(image.socket))
            sock.settimeout(10)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(65536):
                    pass
        assert image.process is not None
        if b"quit" in data:  # it may have been asked to stop, and stops just after closing the connection
            with contextlib.suppress(subprocess.TimeoutExpired):
                image.process.wait(timeout=0.5)
        if image.process.poll() == 0 and b"quit" in data:
            image.start()  # it was asked to stop: not a finding
            return
        image.check_alive(f"after raw bytes {data[:60]!r}")

    def through_client(provider: atheris.FuzzedDataProvider) -> None:
        operation = operations[provider.ConsumeIntInRange(0, len(operations) - 1)]
        name = provider.ConsumeUnicodeNoSurrogates(provider.ConsumeIntInRange(0, 160))
        body = provider.ConsumeBytes(provider.remaining_bytes())
        with image.connect() as connection:
            try:
                if operation == "upload":
                    answer = connection.request(f"livepatch upload {name} {len(body)}", body)
                else:
                    answer = connection.request(f"livepatch {operation} {name}".rstrip())
                # In step: the next answer is the info's own, whatever the name or body held.
                after = connection.request("info")
            except HypervisorError as error:
                if "not sent" not in error.message:
                    image.check_alive(f"on {operation} {name!r}")
                    raise AssertionError(f"the image broke the connection on {operation} {name!r}: "
                                         f"{error.message}") from None
                return
            if after.value("build_id") != build_id or after.rc != 0:
                raise AssertionError(f"out of step after {operation} {name!r}: {after.lines}")
            if operation == "upload" and answer.rc == 0:
                connection.request(f"livepatch unload {name}")
            loaded = connection.request("livepatch list").values("payload")
            assert not loaded, f"payloads left loaded: {loaded}"
        image.check_alive(f"after {operation} {name!r}")

    def one_input(data: bytes) -> None:
        if data[:1] == b"R":
            raw(data[1:])
        else:
            through_client(atheris.FuzzedDataProvider(data))

    return one_input


def _answer_value(image: RunningImage, key: str) -> str:
    with image.connect() as connection:
        return connection.request("info").value(key)


def _loader_target(root: Path) -> Callable[[bytes], None]:
    from xsplice_build.errors import XspliceError
    from xsplice_build.stages import sign

    verified = _minixen_verifier(root)
    keys = root / "keys" / "development"
    key, certificate, _ = sign.load_keys(sign.SigningKeys(keys / "signing_key.pem", keys / "signing_cert.pem",
                                                          development=True))
    image = RunningImage(root)
    counts = {"verified": 0, "loader refused": 0, "applied": 0}

    def tally(key: str) -> None:
        counts[key] += 1
        if key == "verified" and counts[key] % 100 == 1:  # the figures for the report, from the log
            print(f"loader: verified {counts['verified']}, loader refused {counts['loader refused']}, "
                  f"applied {counts['applied']}", file=sys.stderr, flush=True)

    def step(connection, request: str, what: str):  # type: ignore[no-untyped-def]
        try:
            return connection.request(request)
        except XspliceError:
            image.check_alive(what)
            raise AssertionError(f"the image stopped answering {what}") from None

    def one_input(data: bytes) -> None:
        try:
            unsigned = verified(data)
        except XspliceError:
            return  # verify refuses it: it never reaches a running image
        tally("verified")
        # Signed as a build would, then checked as xen-xsplice upload checks it, so only the loader is left.
        payload = sign.verify(sign.sign(unsigned, key, certificate), keys / "signing_cert.pem", "fuzz.livepatch")
        what = f"on a payload that verify accepted (sha256 {__import__('hashlib').sha256(payload).hexdigest()[:16]})"
        with image.connect() as connection:
            answer = connection.request(f"livepatch upload fuzz {len(payload)}", payload)
            image.check_alive(f"uploading {what}")
            if answer.rc != 0:
                tally("loader refused")  # verify and the loader disagree: worth a look, not a crash
                print(f"loader: refused {what}: {answer.error}", file=sys.stderr, flush=True)
                return
            stuck = False
            if step(connection, "livepatch apply fuzz", f"applying {what}").rc == 0:
                state = step(connection, "livepatch get fuzz", f"applying {what}")
                step(connection, "livepatch list", f"listing {what}")
                if state.value("state") == "APPLIED":
                    tally("applied")
                    step(connection, "livepatch revert fuzz", f"reverting {what}")
                    stuck = step(connection, "livepatch get fuzz", f"reverting {what}").value("state") != "CHECKED"
            if not stuck:
                stuck = step(connection, "livepatch unload fuzz", f"unloading {what}").rc != 0
        image.check_alive(what)
        if stuck:
            image.restart()  # a payload that cannot be reverted: a fresh image for the next input

    return one_input


TARGET_SETUP: dict[str, Callable[[Path], Callable[[bytes], None]]] = {
    "elf": _elf_target, "verify": _verify_target, "split": _split_target, "sign": _sign_target, "diff": _diff_target,
    "toml": _toml_target, "protocol": _protocol_target, "loader": _loader_target}


if __name__ == "__main__":
    sys.exit(main())
