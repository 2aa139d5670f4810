"""The package's module graph: no import cycles (imports inside functions count too), and no module
reaches another module's private names."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import wsicodec

PACKAGE = Path(wsicodec.__file__).parent


def _module_name(path: Path) -> str:
    parts = ["wsicodec", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, name: str, modules: dict[str, Path]) -> list[tuple[str, list[str]]]:
    """``(module imported, names taken from it)`` for every import in the file, at any depth."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.split(".")[0] == "wsicodec"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "wsicodec":
                continue
            for a in node.names:  # ``from pkg import module`` imports the module
                sub = f"{base}.{a.name}"
                out.append((sub, []) if sub in modules else (base, [a.name]))
    return out


def test_import_graph_is_acyclic():
    modules = _modules()
    graph = {name: sorted({m for m, _ in _imports(p, name, modules) if m in modules and m != name})
             for name, p in modules.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in graph[m]:
            if state.get(n) == 1:
                cycle = stack[stack.index(n):] + [n]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m)
    assert len(graph) > 30  # the walk saw the whole package


def test_no_module_imports_private_names_of_another():
    modules = _modules()
    offenders = [f"{name} takes {n} from {m}"
                 for name, p in modules.items() for m, names in _imports(p, name, modules)
                 for n in names if n.startswith("_") and not n.startswith("__") and m != name]
    assert offenders == []


def test_every_package_is_installed():
    """pyproject.toml lists the packages to install by name: every folder of wsicodec that is a
    package must be among them (else ``pip install .`` leaves it out)."""
    text = (PACKAGE.parent / "pyproject.toml").read_text()
    listed = set(re.findall(r'"(wsicodec[\w.]*)"', text.split("\npackages = [", 1)[1].split("]", 1)[0]))
    found = {_module_name(p) for p in PACKAGE.rglob("__init__.py")}
    assert found <= listed, f"not in [tool.setuptools] packages: {sorted(found - listed)}"
