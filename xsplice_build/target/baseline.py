"""Baseline definitions (baseline/NAME.toml): which source, at which commit, built how.

A baseline is what a payload is built against: a source tree pinned to a commit, a
build recipe, and the image the running hypervisor was booted from. Nothing in the
pipeline knows minixen from Xen; everything specific to one lives in its definition.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..diff.profile import HOOK_PREFIX, HOOKS, TargetProfile, profile_named
from ..errors import ConfigError
from ..project import DEFAULT_BASELINE as DEFAULT_BASELINE  # re-exported: project.py owns it
from ..project import Project, check_name
from ..schema import Field, check_string_list, check_string_map, check_table, load_toml

_TOP = {
    "name": Field(str, what="the baseline's name; must equal the file name"),
    "description": Field(str, what="one line for `doit list`"),
    "source": Field(dict, required=True, what="where the source comes from"),
    "build": Field(dict, required=True, what="how to build it"),
    "target": Field(dict, what="the target profile"),
    "layout": Field(dict, what="where record layouts come from when the image has no DWARF"),
}
_SOURCE = {
    "path": Field(str, what="a directory or git repository, relative to baseline/ or absolute"),
    "series": Field(str, what="a directory of patches committed in order after the path's content"),
    "git": Field(str, what="URL of a git repository"),
    "debian": Field(str, what="a Debian source package pinned as NAME=VERSION"),
    "commit": Field(str, required=True, what="the pinned commit, 40 hex digits"),
}
_BUILD = {
    "command": Field(list, required=True, what="argv of the build; {jobs} and {cc} are filled in"),
    "image": Field(str, required=True, what="the linked image, relative to the tree"),
    "split_sections": Field(str, what="'wrapper' (add -ffunction-sections for build-orig) or 'base'"),
    "env": Field(dict, what="environment pinned for every build"),
    "config": Field(str, what="a configuration file, relative to baseline/, copied into the tree"),
    "config_dest": Field(str, what="where the configuration file goes in the tree"),
    "prepare": Field(list, what="argv run once in a fresh tree before building"),
    "objects_under": Field(str, what="only objects under this tree directory are diffed"),
    "ignore_objects": Field(list, what="regular expressions of objects never diffed (32-bit boot code, symbol tables)"),
    "compiler": Field(str, what="the name the compiler is invoked by (it can reach the image: `gcc --version`)"),
    "expected_build_id": Field(str, what="the build-id the shipped image has; a rebuild must reproduce it"),
}
_LAYOUT = {
    "probe_command": Field(str, what="a kbuild .cmd file whose compile command is reused to probe the headers"),
    "probe_directory": Field(str, what="the tree directory that command runs in"),
    "probe_includes": Field(list, what="headers that declare the records the payload needs"),
}
_TARGET = {
    "profile": Field(str, what="target profile, e.g. 'xen-x86_64'"),
    "hooks": Field(list, what="the payload hooks this baseline's loader runs (load, unload, preapply, postapply, "
                              "prerevert, postrevert), when fewer than its profile's"),
}
_COMMIT_RE = re.compile(r"[0-9a-f]{40}")
_SPLIT_MODES = ("wrapper", "base")


@dataclass(frozen=True)
class Source:
    """Where a baseline's tree comes from; exactly one of path, git, debian is set."""

    commit: str
    path: Path | None = None
    series: Path | None = None
    git: str | None = None
    debian: str | None = None

    @property
    def kind(self) -> str:
        return "path" if self.path else "git" if self.git else "debian"


@dataclass(frozen=True)
class BuildRecipe:
    command: tuple[str, ...]
    image: str
    split_sections: str = "wrapper"
    env: dict[str, str] = field(default_factory=dict)
    config: Path | None = None
    config_dest: str | None = None
    prepare: tuple[str, ...] = ()
    objects_under: str = ""
    ignore_objects: tuple[str, ...] = ()
    compiler: str = "gcc"
    expected_build_id: str | None = None


@dataclass(frozen=True)
class LayoutProbe:
    """Compile a probe of the tree's own headers with its own flags (and -g), and read the DWARF."""

    command_file: str
    directory: str
    includes: tuple[str, ...]


@dataclass(frozen=True)
class Baseline:
    name: str
    definition: Path
    description: str
    source: Source
    build: BuildRecipe
    profile: str = "xen-x86_64"
    layout_probe: LayoutProbe | None = None
    hooks: tuple[str, ...] | None = None  # None: every hook the profile's loader runs

    def target(self) -> TargetProfile:
        """The target profile, with only the hooks this baseline's loader runs."""
        profile = profile_named(self.profile)
        if self.hooks is None:
            return profile
        ours = tuple(f"{HOOK_PREFIX}{hook}" for hook in self.hooks)
        return replace(profile, hook_sections=tuple(h for h in profile.hook_sections if h in ours))

    def inputs(self) -> list[Path]:
        """Files whose content decides the checkout and builds (for the up-to-date checks)."""
        files = [self.definition]
        if self.build.config:
            files.append(self.build.config)
        for tree in (self.source.path, self.source.series):
            if tree and tree.is_dir() and not (tree / ".git").exists():
                files.extend(sorted(p for p in tree.rglob("*") if p.is_file()))
        return files


def supplied_image(image: Path) -> Path:
    """The image a user says they run (`doit build-patch --image`), checked, as an absolute path.

    build-base trusts it only once the baseline rebuilds to its build-id (stages.steps._trusted_image).
    """
    if not image.is_file():
        raise ConfigError(f"{image}: no such image (give the xen-syms of the hypervisor you run)")
    return image.resolve()


def baseline_names(project: Project) -> list[str]:
    return sorted(p.stem for p in project.baseline_dir.glob("*.toml"))


def load_baseline(project: Project, name: str) -> Baseline:
    """Read and check baseline/NAME.toml; an unknown name lists the known ones."""
    check_name("baseline", name)
    path = project.baseline_dir / f"{name}.toml"
    if not path.is_file():
        known = ", ".join(baseline_names(project)) or "none"
        raise ConfigError(f"unknown baseline {name!r}: no {path.relative_to(project.root)} (known: {known})")
    data = check_table(path, "", load_toml(path), _TOP)
    if data.get("name", name) != name:
        raise ConfigError(f"{path}: key 'name' is {data['name']!r} but the file is named {name!r}")
    return Baseline(
        name=name,
        definition=path,
        description=data.get("description", f"baseline {name}"),
        source=_source(path, data["source"], project),
        build=_build(path, data["build"], project),
        profile=check_table(path, "target", data.get("target", {}), _TARGET).get("profile", "xen-x86_64"),
        layout_probe=_layout(path, data["layout"]) if "layout" in data else None,
        hooks=_hooks(path, data.get("target", {})),
    )


def _hooks(path: Path, target: dict[str, Any]) -> tuple[str, ...] | None:
    if "hooks" not in target:
        return None
    hooks = check_string_list(path, "target", "hooks", target["hooks"])
    unknown = [hook for hook in hooks if hook not in HOOKS]
    if unknown:
        raise ConfigError(f"{path}: [target] hooks: unknown hook {unknown[0]!r}; known: {', '.join(HOOKS)}")
    return tuple(hooks)


def load_all(project: Project) -> list[Baseline]:
    return [load_baseline(project, name) for name in baseline_names(project)]


def _source(path: Path, table: object, project: Project) -> Source:
    data = check_table(path, "source", table, _SOURCE)
    kinds = [key for key in ("path", "git", "debian") if key in data]
    if len(kinds) != 1:
        raise ConfigError(f"{path}: [source] needs exactly one of 'path', 'git' or 'debian' (found {kinds or 'none'})")
    commit = data["commit"]
    if not _COMMIT_RE.fullmatch(commit):
        raise ConfigError(f"{path}: [source] key 'commit' must be 40 lowercase hex digits, not {commit!r}")
    if "debian" in data and not re.fullmatch(r"[a-z0-9][a-z0-9.+-]*=[A-Za-z0-9.+~:-]+", data["debian"]):
        raise ConfigError(f"{path}: [source] key 'debian' must be PACKAGE=VERSION, not {data['debian']!r}")
    return Source(
        commit=commit,
        path=_local(project, data["path"]) if "path" in data else None,
        series=_local(project, data["series"]) if "series" in data else None,
        git=data.get("git"),
        debian=data.get("debian"),
    )


# What build.run_build fills into the words of [build] command and prepare.
COMMAND_PLACEHOLDERS = ("jobs", "cc", "ld")


def _argv(path: Path, key: str, value: object) -> tuple[str, ...]:
    """A command's words, each with only the known {placeholders} and every other brace doubled."""
    words = tuple(check_string_list(path, "build", key, value))
    for number, word in enumerate(words):
        try:
            # A format spec may hold fields of its own ({jobs:{nosuch}}): those count as fields too.
            fields = [name for _text, field, spec, _conversion in string.Formatter().parse(word)
                      if field is not None for name in (field, *(spec and _inner_fields(spec)))]
        except ValueError as error:
            raise ConfigError(f"{path}: [build] {key} word {number} {word!r}: {error} (write a literal brace as "
                              "{{ or }})") from None
        for field_name in fields:
            if field_name not in COMMAND_PLACEHOLDERS:
                known = ", ".join("{" + name + "}" for name in COMMAND_PLACEHOLDERS)
                raise ConfigError(f"{path}: [build] {key} word {number} {word!r}: unknown placeholder "
                                  f"{{{field_name}}}; known: {known} (write a literal brace as {{{{ or }}}})")
    return words


def _inner_fields(spec: str) -> list[str]:
    return [field for _text, field, _spec, _conversion in string.Formatter().parse(spec) if field is not None]


def _build(path: Path, table: object, project: Project) -> BuildRecipe:
    data = check_table(path, "build", table, _BUILD)
    command = _argv(path, "command", data["command"])
    if not command:
        raise ConfigError(f"{path}: [build] key 'command' must not be empty")
    split = data.get("split_sections", "wrapper")
    if split not in _SPLIT_MODES:
        raise ConfigError(f"{path}: [build] key 'split_sections' must be one of {_SPLIT_MODES}, not {split!r}")
    config = _local(project, data["config"]) if "config" in data else None
    if config and not data.get("config_dest"):
        raise ConfigError(f"{path}: [build] key 'config' needs 'config_dest' (where it goes in the tree)")
    return BuildRecipe(
        command=command,
        image=data["image"],
        split_sections=split,
        env=check_string_map(path, "build", "env", data.get("env", {})),
        config=config,
        config_dest=data.get("config_dest"),
        prepare=_argv(path, "prepare", data.get("prepare", [])),
        objects_under=data.get("objects_under", ""),
        ignore_objects=tuple(check_string_list(path, "build", "ignore_objects", data.get("ignore_objects", []))),
        compiler=data.get("compiler", "gcc"),
        expected_build_id=_build_id(path, data.get("expected_build_id")),
    )


def _build_id(path: Path, value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"[0-9a-f]{16,128}", value):
        raise ConfigError(f"{path}: [build] key 'expected_build_id' must be lowercase hex, not {value!r}")
    return value


def _layout(path: Path, table: object) -> LayoutProbe:
    data = check_table(path, "layout", table, _LAYOUT)
    for key in _LAYOUT:
        if key not in data:
            raise ConfigError(f"{path}: [layout] missing key {key!r} ({_LAYOUT[key].what})")
    return LayoutProbe(command_file=data["probe_command"], directory=data["probe_directory"],
                       includes=tuple(check_string_list(path, "layout", "probe_includes", data["probe_includes"])))


def _local(project: Project, value: str) -> Path:
    candidate = Path(value)
    return candidate if candidate.is_absolute() else project.baseline_dir / candidate
