"""The code a stage runs, computed from this package's sources: what makes its cached results stale.

A stage is a function `stage_NAME` of stages/steps.py. Its code is the part of stages/steps.py it
reaches (that function and the helpers, records and imported names it uses, followed
through stages/steps.py), then the import closure of every module of this package those names
come from (imports inside functions count: they run too), with the `__init__.py` of each
package on the way, and the package data files a module names (the xsplice-cc wrapper).
Computed, never listed: a hand-kept list once left the payload stage without
`layout.py`, and a payload built by old code was kept as up to date.

One function (`stage_identity`) serves the doit tasks, the payload store's key and the
cluster's code gate alike.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from .files import write_atomic

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGE = PACKAGE_DIR.name
RUNNER = "stages.steps"  # the module whose `stage_NAME` functions are the stages
RUNNER_FILE = RUNNER.replace(".", "/") + ".py"


@dataclass(frozen=True)
class Sources:
    """The package's Python modules (dotted name relative to the package -> file) and its data files."""

    root: Path
    modules: dict[str, Path]
    data: dict[str, Path]

    @staticmethod
    def of(root: Path) -> Sources:
        modules: dict[str, Path] = {}
        for file in sorted(root.rglob("*.py")):
            parts = file.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
        data = {file.name: file for file in sorted((root / "data").glob("*")) if file.is_file()}
        return Sources(root, modules, data)


def stage_modules(stage: str, root: Path = PACKAGE_DIR) -> list[str]:
    """The files (relative to the package) whose content is stage `stage`'s code, stages/steps.py included."""
    return _files(Sources.of(root), stage)


def stage_identity(stage: str, root: Path = PACKAGE_DIR) -> str:
    """sha256 over the code stage `stage` runs: the stages/steps.py functions it reaches, then whole modules."""
    return _identity(Sources.of(root), stage)


def identities(root: Path = PACKAGE_DIR) -> dict[str, str]:
    """Every stage's identity, reading the sources once."""
    sources = Sources.of(root)
    return {stage: _identity(sources, stage) for stage in stages(root)}


def _files(sources: Sources, stage: str) -> list[str]:
    # the runner's own packages too: importing stages/steps.py runs stages/__init__.py
    closure = _import_closure(sources, _reached_modules(sources, stage) | set(_packages_of(RUNNER)))
    files = {sources.modules[name] for name in closure} | {sources.modules[RUNNER]}
    for name in closure:
        files |= _named_data(sources, name)
    return sorted(file.relative_to(sources.root).as_posix() for file in files)


def _identity(sources: Sources, stage: str) -> str:
    digest = hashlib.sha256()
    digest.update(_runner_part(sources, stage).encode())
    for name in _files(sources, stage):
        if name == RUNNER_FILE:
            continue  # only the part of it the stage reaches, above
        digest.update(name.encode() + b"\0" + (sources.root / name).read_bytes() + b"\0")
    return digest.hexdigest()


@cache
def identity(stage: str) -> str:
    """This installation's identity of `stage` (computed once per process)."""
    return stage_identity(stage)


def cached_identity(stage: str, cache_file: Path, root: Path = PACKAGE_DIR) -> str:
    """`identity(stage)`, kept in `cache_file` while no source of the package changed.

    Parsing the package for every stage took most of a no-op build; the cache is keyed by every
    file's name, size and mtime_ns (an edit changes them), so a changed source is parsed again.
    """
    key = _sources_state(root)
    try:
        cached = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cached = {}
    if not isinstance(cached, dict) or cached.get("sources") != key:
        cached = {"sources": key, "stages": {}}
    found = cached["stages"].get(stage) if isinstance(cached.get("stages"), dict) else None
    if isinstance(found, str):
        return found
    value = stage_identity(stage, root) if root != PACKAGE_DIR else identity(stage)
    cached["stages"][stage] = value
    with contextlib.suppress(OSError):  # a read-only work/: computed again next time
        write_atomic(cache_file, (json.dumps(cached, sort_keys=True) + "\n").encode())
    return value


def _sources_state(root: Path) -> str:
    entries = []
    for directory, subdirectories, names in os.walk(root):
        subdirectories[:] = [d for d in subdirectories if d != "__pycache__"]
        for name in names:
            path = os.path.join(directory, name)
            status = os.stat(path)
            entries.append(f"{os.path.relpath(path, root)}\0{status.st_size}\0{status.st_mtime_ns}\n")
    return hashlib.sha256("".join(sorted(entries)).encode()).hexdigest()


def stages(root: Path = PACKAGE_DIR) -> list[str]:
    """Every stage stages/steps.py defines, by name (`build_base` for `stage_build_base`)."""
    tree = _parse(Sources.of(root).modules[RUNNER])
    return sorted(node.name.removeprefix("stage_") for node in tree.body
                  if isinstance(node, ast.FunctionDef) and node.name.startswith("stage_"))


# ---- inside stages/steps.py: what one stage function reaches -------------------------------------------------------

def _runner_definitions(sources: Sources) -> tuple[dict[str, ast.AST], dict[str, str], str]:
    """stages/steps.py's top-level definitions by name, its imported names -> package module, and its text."""
    file = sources.modules[RUNNER]
    text = file.read_text()
    tree = _parse_text(text, str(file))
    definitions: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef):
            definitions[node.name] = node
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    definitions[target.id] = node
    imported = {}
    for module, name in _imports(sources, RUNNER):
        imported[name] = module
    return definitions, imported, text


def _reached(sources: Sources, stage: str) -> tuple[list[ast.AST], set[str]]:
    """The stages/steps.py definitions `stage_<stage>` reaches and the package modules of the names it uses."""
    definitions, imported, _text = _runner_definitions(sources)
    start = f"stage_{stage}"
    if start not in definitions:
        raise KeyError(f"{RUNNER_FILE} has no {start}")
    seen: dict[str, ast.AST] = {}
    modules: set[str] = set()
    queue = [start]
    while queue:
        name = queue.pop()
        if name in seen:
            continue
        seen[name] = definitions[name]
        for used in _names_used(definitions[name]):
            if used in definitions and used not in seen:
                queue.append(used)
            elif used in imported:
                modules.add(imported[used])
    return [seen[name] for name in sorted(seen)], modules


def _reached_modules(sources: Sources, stage: str) -> set[str]:
    return _reached(sources, stage)[1]


def _runner_part(sources: Sources, stage: str) -> str:
    _definitions, _imported, text = _runner_definitions(sources)
    nodes, _modules = _reached(sources, stage)
    return "\n".join(ast.get_source_segment(text, node) or "" for node in nodes)


def _names_used(node: ast.AST) -> set[str]:
    return {child.id for child in ast.walk(node) if isinstance(child, ast.Name)}


# ---- between modules: the import closure ---------------------------------------------------------------------

def _import_closure(sources: Sources, modules: set[str]) -> set[str]:
    closure: set[str] = set()
    queue = sorted(modules)
    while queue:
        module = queue.pop()
        if module in closure:
            continue
        closure.add(module)
        queue.extend(_packages_of(module))
        queue.extend(found for found, _name in _imports(sources, module))
    return closure


def _packages_of(module: str) -> list[str]:
    """The packages whose __init__.py importing `module` runs ("" is this package itself)."""
    parts = module.split(".") if module else []
    return [".".join(parts[:i]) for i in range(len(parts))]


def _imports(sources: Sources, module: str) -> list[tuple[str, str]]:
    """(package module, local name) for every import of this package's code in `module`, anywhere in it."""
    file = sources.modules[module]
    return _imports_in(file.read_text(), str(file), module, frozenset(sources.modules))


@cache
def _imports_in(text: str, filename: str, module: str, known: frozenset[str]) -> list[tuple[str, str]]:
    package = module if filename.endswith("__init__.py") else module.rpartition(".")[0]
    found = []
    for node in ast.walk(_parse_text(text, filename)):
        if isinstance(node, ast.ImportFrom):
            base = _absolute(package, node.module, node.level)
            if base is None:
                continue
            for alias in node.names:
                submodule = f"{base}.{alias.name}" if base else alias.name
                target = submodule if submodule in known else base
                found.append((target, alias.asname or alias.name))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(f"{PACKAGE}."):
                    name = alias.name.removeprefix(PACKAGE).removeprefix(".")
                    found.append((name, alias.asname or alias.name.split(".")[0]))
    return [(target, name) for target, name in found if target in known]


def _absolute(package: str, module: str | None, level: int) -> str | None:
    """The dotted name (relative to this package) an import refers to, or None for another package's."""
    if level == 0:
        if module is None or not (module == PACKAGE or module.startswith(f"{PACKAGE}.")):
            return None
        return module.removeprefix(PACKAGE).removeprefix(".")
    parts = package.split(".") if package else []
    if level - 1 > len(parts):
        return None
    base = parts[:len(parts) - (level - 1)]
    if module:
        base.append(module)
    return ".".join(base)


def _named_data(sources: Sources, module: str) -> set[Path]:
    """The package data files `module` names in a string literal (build.py: "xsplice-cc")."""
    file = sources.modules[module]
    strings = _strings_in(file.read_text(), str(file))
    return {path for name, path in sources.data.items() if name in strings}


@cache
def _strings_in(text: str, filename: str) -> frozenset[str]:
    return frozenset(node.value for node in ast.walk(_parse_text(text, filename))
                     if isinstance(node, ast.Constant) and isinstance(node.value, str))


def _parse(file: Path) -> ast.AST:
    return _parse_text(file.read_text(), str(file))


@cache
def _parse_text(text: str, filename: str) -> ast.AST:
    return ast.parse(text, filename)


def package_imports(root: Path = PACKAGE_DIR) -> dict[str, set[str]]:
    """Every module of the package -> the package modules it imports (anywhere in it), "" being __init__."""
    sources = Sources.of(root)
    return {module: {found for found, _name in _imports(sources, module)} - {module} for module in sources.modules}


def third_party_imports(root: Path = PACKAGE_DIR) -> dict[str, set[str]]:
    """Every module of the package -> the top-level names of other packages it imports (anywhere in it)."""
    sources = Sources.of(root)
    found: dict[str, set[str]] = {}
    for module, file in sources.modules.items():
        names = set()
        for node in ast.walk(_parse(file)):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[module] = names - {PACKAGE}
    return found
