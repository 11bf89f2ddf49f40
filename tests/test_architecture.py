"""The layers hold: import-linter's contracts, no cycles, a sans-IO machine,
and docs/architecture.md naming exactly the packages that exist."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "architecture.md").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
IO_MODULES = ("socket", "selectors", "select", "fcntl", "termios", "pluggy")


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command as c; c()"],
        cwd=cwd, capture_output=True, text=True, timeout=300,
        env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"},
    )


def test_import_linter_contracts_are_kept() -> None:
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "bad_import", "contract"),
    [
        ("emulator/core/memory.py", "import socket", "sans-IO"),
        ("emulator/guest/kmalloc.py", "from emulator.machine import machine", "layers"),
        ("emulator/machine/qom.py", "import vmstate", "only importer of vmstate"),
        ("vmstate/codec.py", "import emulator.errors", "vmstate knows nothing of the emulator"),
        ("emulator/guest/kernel.py", "from emulator.core.device import VirtIOSerial", "registers"),
        ("emulator/state/records.py", "import subprocess", "sans-IO"),
    ],
)
def test_a_wrong_import_breaks_a_contract(tmp_path: Path, module: str, bad_import: str, contract: str) -> None:
    """The contracts are not vacuous: the same tree plus one bad import fails."""
    for name in ("emulator", "vmstate"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{bad_import}  # deliberately wrong\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and contract in result.stdout, result.stdout


def _import_cycles(tree: Path) -> list[list[str]]:
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "import_cycles.py")],
        cwd=tree, capture_output=True, text=True, timeout=300, check=True,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
    )
    cycles: list[list[str]] = json.loads(result.stdout)
    return cycles


def test_no_import_cycles_even_under_type_checking() -> None:
    assert _import_cycles(ROOT) == []


def test_a_cycle_through_a_package_init_under_type_checking_is_found(tmp_path: Path) -> None:
    """The cycle check is not vacuous: ports -> emulator.core -> device -> ports."""
    for name in ("emulator", "vmstate"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    init = tmp_path / "emulator" / "core" / "__init__.py"
    init.write_text(init.read_text() + "from emulator.core.device import VirtIOSerial  # noqa: F401\n")
    ports = tmp_path / "emulator" / "core" / "ports.py"
    ports.write_text(ports.read_text() + "\nfrom typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from emulator.core import VirtIOSerial\n")
    assert ["emulator.core", "emulator.core.device", "emulator.core.ports"] in [
        [m for m in c if m in ("emulator.core", "emulator.core.device", "emulator.core.ports")]
        for c in _import_cycles(tmp_path)
    ]


@pytest.mark.parametrize(
    "module", ["emulator.machine.machine", "emulator.state.records", "emulator.guest.kernel", "emulator.core.device"]
)
def test_importing_a_sans_io_layer_loads_no_io_and_no_plugin_machinery(module: str) -> None:
    """What the import itself loads (the interpreter's start-up, e.g. a site
    .pth file, is the baseline and must not load these either)."""
    code = (
        "import sys\n"
        f"before = {{m for m in {IO_MODULES!r} if m in sys.modules}}\n"
        f"import {module}\n"
        f"print(sorted(before), sorted(m for m in {IO_MODULES!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[] []"


def test_a_machine_builds_and_boots_with_the_builtin_port_types_alone() -> None:
    code = (
        "import sys\n"
        "from emulator.machine.machine import Machine\n"
        "m = Machine()\n"
        "m.device_add({'driver': 'virtio-serial'})\n"
        "m.device_add({'driver': 'virtserialport', 'nr': '1', 'name': 'a'})\n"
        "m.device_add({'driver': 'virtconsole'})\n"
        "m.boot()\n"
        "print(len(m.guest.ports()))\n"
        f"print(sorted(m for m in {IO_MODULES!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split("\n")[:2] == ["2", "[]"]


def _doc_layers() -> list[str]:
    block = DOC.split("<!-- layers -->", 1)[1].split("<!-- /layers -->", 1)[0]
    return re.findall(r"^\d+\. `([\w.]+)`$", block, re.M)


def test_the_documented_layers_are_the_contract() -> None:
    contracts = PYPROJECT["tool"]["importlinter"]["contracts"]
    layers = next(c for c in contracts if c["type"] == "layers")["layers"]
    assert _doc_layers() == layers


def test_architecture_doc_names_every_package_and_only_those() -> None:
    named = set(re.findall(r"^### emulator/(\w+)/$", DOC, re.M))
    existing = {p.parent.name for p in (ROOT / "emulator").glob("*/__init__.py")}
    assert named == existing
    assert {f"emulator.{p}" for p in existing} | {"emulator.errors"} == set(_doc_layers())
    for module in re.findall(r"^### emulator/(\w+)\.py$", DOC, re.M):
        assert (ROOT / "emulator" / f"{module}.py").is_file()


def test_architecture_doc_names_every_module_of_each_package() -> None:
    """Each package's paragraph mentions every module in it."""
    sections = re.split(r"^### ", DOC, flags=re.M)[1:]
    for section in sections:
        heading, body = section.split("\n", 1)
        if not heading.endswith("/"):
            continue
        package = ROOT / heading.rstrip("/")
        for module in sorted(package.glob("*.py")):
            if module.name == "__init__.py":
                continue
            assert module.stem in body, f"docs/architecture.md: {heading} does not mention {module.name}"
