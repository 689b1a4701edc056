"""What a real-Xen baseline boots in a VM: Debian's pinned packages, unpacked, and our initramfs.

baseline/runtime/NAME.toml pins the Debian binary packages (name, version, sha256 of the .deb)
and names, inside them, the hypervisor, the dom0 kernel, the kernel modules and the programs
dom0 needs. `boot_files` turns that into the three files QEMU boots, under work/runtime/:

    debs/<sha256>.deb          each package as `apt-get download` fetched it, checked by its pin
    root-<key>/                every package unpacked by `dpkg-deb -x` (key: the pinned packages)
    boot-<key>/                xen (uncompressed: QEMU's multiboot loader wants it so), vmlinuz,
                               initrd.cpio and boot.json (key: everything that goes into them)

The initramfs is ours: a cpio written by cpio.py (same inputs, same bytes) holding busybox,
the programs with the shared libraries they need (by DT_NEEDED, from the unpacked packages, so
nothing of this machine's own system reaches dom0), the modules in load order, our test program
(data/xsplice-hypercall.c, built here with gcc -static) and our init (data/vm-init).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..elf.dynamic import dependencies
from ..errors import ConfigError, XspliceError
from ..files import sha256_file
from ..project import Project, check_name
from ..schema import Field, check_string_list, check_string_map, check_table, load_toml
from . import cpio

DATA = Path(__file__).resolve().parents[1] / "data"
GUEST_FILES = ("vm-init", "xsplice-hypercall.c")
LIBRARY_DIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib", "usr/lib")
Log = Callable[[str], None]
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_TOP = {
    "description": Field(str, what="one line"),
    "hypervisor": Field(str, True, "the hypervisor (gzipped or not) inside the packages"),
    "kernel": Field(str, True, "the dom0 kernel inside the packages"),
    "xen_command_line": Field(str, True, "the hypervisor's command line"),
    "kernel_command_line": Field(str, True, "dom0's kernel command line"),
    "kernel_modules": Field(list, True, "modules dom0 loads, in order, inside the packages"),
    "programs": Field(dict, True, "NAME = path inside the packages, placed in dom0's /bin"),
    "package": Field(list, True, "the [[package]] tables: Debian binary packages, pinned"),
}
_PACKAGE = {
    "name": Field(str, True, "Debian package name"),
    "version": Field(str, True, "the exact version"),
    "sha256": Field(str, True, "sha256 of the .deb"),
}


class RuntimePackageError(XspliceError):
    """A runtime package cannot be fetched or unpacked, or a file the runtime names is missing."""


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    sha256: str


@dataclass(frozen=True)
class Runtime:
    """baseline/runtime/NAME.toml, checked."""

    baseline: str
    path: Path
    hypervisor: str
    kernel: str
    xen_command_line: str
    kernel_command_line: str
    kernel_modules: tuple[str, ...]
    programs: dict[str, str]
    packages: tuple[Package, ...]

    @property
    def packages_key(self) -> str:
        pins = "".join(f"{p.name}\0{p.version}\0{p.sha256}\n" for p in sorted(self.packages, key=lambda p: p.name))
        return hashlib.sha256(pins.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class BootFiles:
    """What QEMU boots: multiboot kernel (xen), its command line, and the two modules."""

    hypervisor: Path
    kernel: Path
    initrd: Path
    xen_command_line: str
    kernel_command_line: str


def runtime_path(project: Project, baseline: str) -> Path:
    return project.baseline_dir / "runtime" / f"{check_name('baseline', baseline)}.toml"


def has_runtime(project: Project, baseline: str) -> bool:
    """True when `baseline` boots as a real hypervisor in a VM (it has a runtime definition)."""
    return runtime_path(project, baseline).is_file()


def load_runtime(project: Project, baseline: str) -> Runtime:
    path = runtime_path(project, baseline)
    data = check_table(path, "", load_toml(path), _TOP)
    packages = []
    for number, table in enumerate(data["package"]):
        entry = check_table(path, f"package {number}", table, _PACKAGE)
        if not _SHA256_RE.fullmatch(entry["sha256"]):
            raise ConfigError(f"{path}: [package {number}] sha256 must be 64 lowercase hex digits")
        if not re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", entry["name"]) or not re.fullmatch(r"[A-Za-z0-9.+~:-]+",
                                                                                          entry["version"]):
            raise ConfigError(f"{path}: [package {number}] is not a Debian NAME and VERSION")
        packages.append(Package(entry["name"], entry["version"], entry["sha256"]))
    inside = [data["hypervisor"], data["kernel"], *check_string_list(path, "", "kernel_modules",
                                                                     data["kernel_modules"])]
    programs = check_string_map(path, "", "programs", data["programs"])
    for value in [*inside, *programs.values()]:
        if value.startswith("/") or ".." in Path(value).parts:
            raise ConfigError(f"{path}: {value!r} must be a path inside the packages (relative, no '..')")
    for name in programs:
        check_name("program", name)
    return Runtime(baseline=baseline, path=path, hypervisor=data["hypervisor"], kernel=data["kernel"],
                   xen_command_line=data["xen_command_line"], kernel_command_line=data["kernel_command_line"],
                   kernel_modules=tuple(data["kernel_modules"]), programs=programs, packages=tuple(packages))


def boot_files(project: Project, runtime: Runtime, log: Log = lambda text: None) -> BootFiles:
    """The files QEMU boots for `runtime`, made once and kept under a key of everything in them."""
    key = _boot_key(runtime)
    directory = project.work_dir / "runtime" / f"boot-{key}"
    files = BootFiles(directory / "xen", directory / "vmlinuz", directory / "initrd.cpio",
                      runtime.xen_command_line, runtime.kernel_command_line)
    if not _intact(directory):
        root = unpacked_root(project, runtime, log)
        log(f"building the initramfs for {runtime.baseline}")
        staging = Path(tempfile.mkdtemp(prefix=".boot-", dir=directory.parent))
        try:
            hypervisor = _inside(runtime, root, runtime.hypervisor).read_bytes()
            (staging / "xen").write_bytes(gzip.decompress(hypervisor) if hypervisor[:2] == b"\x1f\x8b" else hypervisor)
            shutil.copyfile(_inside(runtime, root, runtime.kernel), staging / "vmlinuz")
            (staging / "initrd.cpio").write_bytes(initramfs(runtime, root, staging))
            record = {name: sha256_file(staging / name) for name in ("xen", "vmlinuz", "initrd.cpio")}
            (staging / "boot.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
            shutil.rmtree(directory, ignore_errors=True)
            staging.rename(directory)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return files


def _boot_key(runtime: Runtime) -> str:
    digest = hashlib.sha256(runtime.path.read_bytes())
    # the guest's files, and the code that builds the boot files from them (this module, cpio.py)
    for path in (*(DATA / name for name in GUEST_FILES), Path(__file__).resolve(), Path(cpio.__file__).resolve()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _intact(directory: Path) -> bool:
    try:
        record = json.loads((directory / "boot.json").read_text())
        return all(sha256_file(directory / name) == digest for name, digest in record.items())
    except (OSError, ValueError):
        return False


def unpacked_root(project: Project, runtime: Runtime, log: Log = lambda text: None) -> Path:
    """Every pinned package unpacked into one directory (dpkg-deb -x), made once per set of pins."""
    root = project.work_dir / "runtime" / f"root-{runtime.packages_key}"
    if (root / ".complete").is_file():
        return root
    debs = [fetch_package(project, runtime, package, log) for package in runtime.packages]
    staging = Path(tempfile.mkdtemp(prefix=".root-", dir=root.parent))
    try:
        for deb in debs:
            _run(["dpkg-deb", "-x", str(deb), str(staging)], f"{runtime.path}: unpacking {deb.name}")
        (staging / ".complete").write_text("".join(f"{p.name} {p.version}\n" for p in runtime.packages))
        shutil.rmtree(root, ignore_errors=True)
        staging.rename(root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def fetch_package(project: Project, runtime: Runtime, package: Package, log: Log) -> Path:
    """work/runtime/debs/<sha256>.deb: `apt-get download NAME=VERSION`, kept only when its sha256 is the pin."""
    target = project.work_dir / "runtime" / "debs" / f"{package.sha256}.deb"
    if target.is_file() and sha256_file(target) == package.sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log(f"downloading {package.name}={package.version}")
    with tempfile.TemporaryDirectory(prefix=".download-", dir=target.parent) as temporary:
        _run(["apt-get", "download", "-q", f"{package.name}={package.version}"],
             f"{runtime.path}: package {package.name}={package.version}", cwd=Path(temporary))
        downloaded = next(Path(temporary).glob("*.deb"), None)
        if downloaded is None:
            raise RuntimePackageError(f"{runtime.path}: package {package.name}={package.version}: apt-get download "
                                "wrote no .deb")
        digest = sha256_file(downloaded)
        if digest != package.sha256:
            raise RuntimePackageError(f"{runtime.path}: package {package.name}={package.version} has sha256 {digest}, "
                                f"not the pinned {package.sha256}; refusing it")
        downloaded.chmod(0o644)
        downloaded.rename(target)
    return target


def initramfs(runtime: Runtime, root: Path, scratch: Path) -> bytes:
    """dom0's initramfs: our init, busybox, the programs and their libraries, modules, our test program."""
    entries: dict[str, cpio.Entry] = {}

    def add(entry: cpio.Entry) -> None:
        parts = entry.path.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            entries.setdefault(parent, cpio.directory(parent))
        entries[entry.path] = entry

    for name in ("dev", "proc", "sys", "tmp", "payloads", "root"):
        add(cpio.directory(name))
    add(cpio.character_device("dev/console", 5, 1))
    add(cpio.regular("init", (DATA / "vm-init").read_bytes(), executable=True))
    add(cpio.regular("etc/xen/xl.conf", b"# empty: xl only reads the hypervisor here\n"))
    for number, module in enumerate(runtime.kernel_modules):
        add(cpio.regular(f"lib/modules/{number:02d}-{Path(module).name}", _inside(runtime, root, module).read_bytes()))
    for name, path in sorted(runtime.programs.items()):
        add(cpio.regular(f"bin/{name}", _inside(runtime, root, path).read_bytes(), executable=True))
    add(cpio.regular("bin/xsplice-hypercall", _test_program(scratch), executable=True))
    for path, data in sorted(_libraries(runtime, root).items()):
        add(cpio.regular(path, data, executable=True))
    return cpio.archive(list(entries.values()))


def _libraries(runtime: Runtime, root: Path) -> dict[str, bytes]:
    """Every shared library (and interpreter) the programs need, transitively, by its path in the packages."""
    found: dict[str, bytes] = {}
    pending = [(name, _inside(runtime, root, path).read_bytes()) for name, path in runtime.programs.items()]
    seen: set[str] = set()
    while pending:
        name, data = pending.pop()
        needs = dependencies(data, name)
        wanted = [(needs.interpreter.lstrip("/"), None)] if needs.interpreter else []
        wanted += [(None, soname) for soname in needs.needed]
        for path, soname in wanted:
            location = path or _library_path(runtime, root, soname, name)
            if location in seen:
                continue
            seen.add(location)
            found[location] = _inside(runtime, root, location).read_bytes()
            pending.append((location, found[location]))
    return found


def _library_path(runtime: Runtime, root: Path, soname: str, needed_by: str) -> str:
    for directory in LIBRARY_DIRS:
        if (root / directory / soname).exists():
            return f"{directory}/{soname}"
    raise ConfigError(f"{runtime.path}: {needed_by} needs {soname}, which no pinned package ships; add the "
                      "Debian package that does")


def _inside(runtime: Runtime, root: Path, path: str) -> Path:
    """`path` in the unpacked packages, following symlinks as dom0 would: an absolute target is in them too."""
    current = root / path
    for _hop in range(40):
        if not current.is_symlink():
            break
        target = os.readlink(current)
        current = root / target.lstrip("/") if target.startswith("/") else current.parent / target
        current = Path(os.path.normpath(current))
    if not current.is_relative_to(root) or current.is_symlink() or not current.is_file():
        raise ConfigError(f"{runtime.path}: {path} is not a file in the pinned packages")
    return current


def _test_program(scratch: Path) -> bytes:
    """data/xsplice-hypercall.c built static here (dom0 has no libc of ours to link against)."""
    source = scratch / "xsplice-hypercall.c"
    shutil.copyfile(DATA / "xsplice-hypercall.c", source)
    output = scratch / "xsplice-hypercall"
    _run(["gcc", "-static", "-O2", "-Wall", "-Werror", f"-ffile-prefix-map={scratch}=.", "-o", str(output),
          str(source)], "building data/xsplice-hypercall.c", cwd=scratch)
    data = output.read_bytes()
    output.unlink()
    source.unlink()
    return data


def _run(argv: list[str], what: str, cwd: Path | None = None) -> None:
    try:
        result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    except OSError as error:
        raise RuntimePackageError(f"{what}: cannot run {argv[0]}: {error.strerror or error}") from None
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise RuntimePackageError(f"{what}: {argv[0]} failed: {lines[-1] if lines else f'exit {result.returncode}'}")

