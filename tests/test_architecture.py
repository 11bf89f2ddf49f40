"""The layers hold: import-linter's contracts, no cycles, a sans-IO machine,
and docs/architecture.md naming exactly the packages that exist."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp
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


def test_no_import_cycles_even_under_type_checking() -> None:
    graph = grimp.build_graph("emulator", "vmstate", exclude_type_checking_imports=False)
    modules = sorted(graph.modules)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m) & set(modules)) for m in modules}
    # Tarjan's strongly connected components; a component of two or more is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for m in modules:
        if m not in index:
            visit(m)
    # A package's __init__ importing its own submodule is not a cycle of layers.
    cycles = [c for c in cycles if not all(x == c[0] or x.startswith(c[0] + ".") for x in c)]
    assert cycles == []


def test_importing_the_machine_loads_no_io_and_no_plugin_machinery() -> None:
    code = (
        "import sys\n"
        "import emulator.machine.machine\n"
        f"print(sorted(m for m in {IO_MODULES!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


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
