"""The direction of imports docs/design.md documents: commands -> release/runtime -> pipeline -> stages ->
diff/target -> elf -> foundation. A module imports its own layer or lower ones, never a higher one."""

from __future__ import annotations

import pytest

from xsplice_build.code_identity import package_imports, third_party_imports

# Lowest first; every module of the package is in exactly one layer (a new module must be placed).
LAYERS: dict[str, set[str]] = {
    "foundation": {"", "errors", "files", "project", "schema", "patches", "lock", "code_identity",
                   "console", "records", "keys"},
    "elf": {"elf", "elf.constants", "elf.structs", "elf.model", "elf.reader", "elf.writer", "elf.notes",
            "elf.relink", "elf.compare", "elf.livepatch", "elf.dynamic", "elf.debug"},
    "diff/target": {"diff", "diff.state", "diff.profile", "diff.correlate", "diff.compare", "diff.lines",
                    "diff.include", "diff.rules", "diff.extract", "diff.explain", "diff.engine", "diff.types",
                    "diff.layouts", "layout", "image", "baseline", "bringup"},
    "stages": {"stages", "checkout", "toolchain", "build", "patch_rules", "payload", "sign", "keyscan", "sandbox",
               "sandboxed_base", "sandboxed_build", "sandboxed_diff", "channel", "probes", "vm_runtime", "xen_vm",
               "cpio", "provenance", "debuginfo"},
    "pipeline": {"tasks", "runner", "reporter", "integrity", "loader"},
    "release/runtime": {"release", "audit", "payload_store", "cluster", "cluster_worker", "verify", "hypervisor"},
    "commands": {"cli", "xen_xsplice", "doit_commands", "release_commands"},
}
ORDER = list(LAYERS)
LAYER_OF = {module: layer for layer, modules in LAYERS.items() for module in modules}
# The doit wiring: only these import doit; a data store (records, releases, the payload store) never does.
# console: the doit commands' boundary names doit's database error to say what to delete.
DOIT_WIRING = {"tasks", "runner", "reporter", "loader", "doit_commands", "release_commands", "console"}


@pytest.mark.fast
def test_every_module_has_a_layer() -> None:
    modules = set(package_imports())
    assert modules - set(LAYER_OF) == set(), "place the new module in a layer (here and in docs/design.md)"
    assert set(LAYER_OF) - modules == set(), "a module in LAYERS no longer exists"


@pytest.mark.fast
def test_imports_go_down_the_layers_only() -> None:
    upward = sorted(f"{module} ({LAYER_OF[module]}) imports {imported} ({LAYER_OF[imported]})"
                    for module, imports in package_imports().items() for imported in imports
                    if ORDER.index(LAYER_OF[imported]) > ORDER.index(LAYER_OF[module]))
    assert upward == []


@pytest.mark.fast
def test_no_command_imports_another() -> None:
    commands = LAYERS["commands"]
    assert {module: imports & commands for module, imports in package_imports().items()
            if module in commands and imports & commands} == {}


@pytest.mark.fast
def test_only_the_doit_wiring_imports_doit_and_only_the_cluster_imports_dask() -> None:
    imports = third_party_imports()
    assert {module for module, names in imports.items() if "doit" in names} <= DOIT_WIRING
    assert {module for module, names in imports.items() if "distributed" in names or "dask" in names} <= \
        {"cluster", "cluster_worker"}


@pytest.mark.fast
def test_no_data_store_imports_the_doit_wiring() -> None:
    # The payload store's key once came from tasks.py; the records, the release and the store are plain data.
    stores = {"payload_store", "release", "integrity", "stages"}
    assert {module: imports & DOIT_WIRING for module, imports in package_imports().items()
            if module in stores and imports & DOIT_WIRING} == {}
