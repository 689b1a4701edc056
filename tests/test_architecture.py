"""The direction of imports docs/design.md documents, by subpackage: commands -> release, runtime -> pipeline ->
stages -> vm -> target -> diff -> elf -> foundation (the package's top-level modules). A module imports its own
layer or lower ones, never a higher one; siblings of one layer never import each other."""

from __future__ import annotations

import pytest

from xsplice_build.code_identity import package_imports, third_party_imports

# The package's top-level modules: everything else builds on them ("" is the package's __init__.py).
FOUNDATION = {"", "errors", "files", "project", "schema", "patches", "lock", "code_identity", "console", "records",
              "keys", "noop"}
# Lowest first: each layer's subpackages. Every module is in exactly one layer: a top-level module must be in
# FOUNDATION, a subpackage in one layer (a new one must be placed here and in docs/design.md).
LAYERS: dict[str, set[str]] = {
    "foundation": {""},
    "elf": {"elf"},
    "diff": {"diff"},
    "target": {"target"},
    "vm": {"vm"},
    "stages": {"stages"},
    "pipeline": {"pipeline"},
    "release/runtime": {"release", "runtime"},
    "commands": {"commands"},
}
ORDER = list(LAYERS)
LAYER_OF_PACKAGE = {package: layer for layer, packages in LAYERS.items() for package in packages}
# The doit wiring: only these import doit; a data store (records, releases, the payload store) never does.
# commands.launcher: the `doit` script itself, which hands every run it does not answer from a stamp to doit.
DOIT_WIRING = {"pipeline.tasks", "pipeline.runner", "pipeline.reporter", "pipeline.loader",
               "commands.doit_commands", "commands.release_commands", "commands.launcher"}
DASK = {"release.cluster", "release.cluster_worker"}


def package_of(module: str) -> str:
    """The subpackage a module belongs to ("" for a top-level module)."""
    return module.split(".")[0] if "." in module or module in LAYER_OF_PACKAGE else ""


def layer_of(module: str) -> str:
    return LAYER_OF_PACKAGE[package_of(module)]


@pytest.mark.fast
def test_every_module_has_a_layer() -> None:
    modules = set(package_imports())
    top_level = {module for module in modules if package_of(module) == ""}
    assert top_level == FOUNDATION, "place the new top-level module in FOUNDATION (and docs/design.md)"
    packages = {package_of(module) for module in modules}
    assert packages - set(LAYER_OF_PACKAGE) == set(), "place the new subpackage in a layer (and docs/design.md)"
    assert set(LAYER_OF_PACKAGE) - packages == set(), "a subpackage in LAYERS no longer exists"


@pytest.mark.fast
def test_imports_go_down_the_layers_only() -> None:
    upward = sorted(f"{module} ({layer_of(module)}) imports {imported} ({layer_of(imported)})"
                    for module, imports in package_imports().items() for imported in imports
                    if ORDER.index(layer_of(imported)) > ORDER.index(layer_of(module)))
    assert upward == []


@pytest.mark.fast
def test_siblings_of_a_layer_do_not_import_each_other() -> None:
    # release and runtime share a layer: neither builds on the other.
    across = sorted(f"{module} imports {imported}" for module, imports in package_imports().items()
                    for imported in imports if layer_of(module) == layer_of(imported) != "foundation"
                    and package_of(module) != package_of(imported))
    assert across == []


@pytest.mark.fast
def test_no_command_imports_another() -> None:
    commands = {module for module in package_imports() if package_of(module) == "commands"}
    assert {module: imports & commands for module, imports in package_imports().items()
            if module in commands and imports & commands} == {}


@pytest.mark.fast
def test_only_the_doit_wiring_imports_doit_and_only_the_cluster_imports_dask() -> None:
    imports = third_party_imports()
    assert {module for module, names in imports.items() if "doit" in names} <= DOIT_WIRING
    assert {module for module, names in imports.items() if "distributed" in names or "dask" in names} <= DASK


@pytest.mark.fast
def test_no_data_store_imports_the_doit_wiring() -> None:
    # The payload store's key once came from tasks.py; the records, the stages, the release and the store are
    # plain data.
    stores = {module for module in package_imports() if package_of(module) in {"", "stages"}} | \
        {"release.manifest", "release.payload_store", "pipeline.integrity"}
    assert {module: imports & DOIT_WIRING for module, imports in package_imports().items()
            if module in stores and imports & DOIT_WIRING} == {}
