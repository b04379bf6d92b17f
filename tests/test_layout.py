"""The package layout: no import cycles between modules of `dbproxy`, every import follows the layer
order documented in `dbproxy/__init__.py`, the one-way rule between the top-level packages holds,
the wheel lists every package folder, and the README's architecture tree names every folder.

Imports are read with `ast` from the source, all of them: module level, inside functions and
under `TYPE_CHECKING` alike (a cycle hidden in a function is still a cycle).
"""

from __future__ import annotations

import ast
import re
import tomllib
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: dbproxy's folders, bottom first. A module may import its own folder's modules and those of
#: folders earlier in this list; "" is the package itself (`dbproxy/__init__.py`), `TOP` the
#: command-line modules directly in `dbproxy/`.
LAYERS = ["", "protocol", "config", "net", "auth", "backend", "journal", "policy", "review", "undo", "hold",
          "frontend"]
TOP = "<top>"
#: The one module of dbproxy allowed to import the benchmarks (lazily, for `dbproxy bench`).
BENCH_ENTRY = "dbproxy.bench_cli"
#: Which top-level packages each may import (the one-way rule: dbproxy -> sandbox -> inverse).
ALLOWED_TOP = {
    "inverse": {"inverse"},
    "sandbox": {"sandbox", "inverse"},
    "dbproxy": {"dbproxy", "sandbox", "inverse"},
}
OURS = {"dbproxy", "sandbox", "inverse", "benchmarks", "dbproxy_benchmarks"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(package: str) -> dict[str, Path]:
    return {module_name(p): p for p in sorted((ROOT / package).rglob("*.py"))}


def imports_of(path: Path, name: str, known: Iterable[str]) -> set[str]:
    """Every module of ours that `path` (module `name`) imports, as dotted names."""
    known = set(known)
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            for alias in node.names:
                sub = f"{mod}.{alias.name}"
                out.add(sub if sub in known else mod)
    return {m for m in out if m.split(".")[0] in OURS}


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return ""
    if (ROOT / "dbproxy" / parts[1]).is_dir():
        return parts[1]
    return TOP


def rank(layer_name: str) -> int:
    return len(LAYERS) if layer_name == TOP else LAYERS.index(layer_name)


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module, or a module importing itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for mod, deps in sorted(graph.items()):
        for dep in sorted(deps):
            if dep.split(".")[0] != "dbproxy":
                continue
            a, b = layer(mod), layer(dep)
            if b == "" or a == b:
                continue
            if rank(b) >= rank(a):
                bad.append(f"{mod} ({a or 'dbproxy'}) imports {dep} ({b}), which is not below it")
    return bad


@pytest.fixture(scope="module")
def dbproxy_graph() -> dict[str, set[str]]:
    mods = modules("dbproxy")
    return {name: {d for d in imports_of(path, name, mods) if d.split(".")[0] == "dbproxy"}
            for name, path in mods.items()}


def test_the_checks_catch_what_they_are_for() -> None:
    """The checker itself: a cycle and an upward import in a made-up graph are found."""
    graph = {"dbproxy.hold.session": {"dbproxy.frontend.session"},
             "dbproxy.frontend.session": {"dbproxy.hold.session"},
             "dbproxy.protocol.framing": set()}
    assert find_cycles(graph) == [["dbproxy.frontend.session", "dbproxy.hold.session"]]
    assert layer_violations(graph) == [
        "dbproxy.hold.session (hold) imports dbproxy.frontend.session (frontend), which is not below it"]
    assert find_cycles({"dbproxy.a": {"dbproxy.a"}}) == [["dbproxy.a"]]


def test_imports_are_resolved_to_modules(dbproxy_graph: dict[str, set[str]]) -> None:
    """`from dbproxy.config import log` is an import of the module `dbproxy.config.log`."""
    assert "dbproxy.config.log" in dbproxy_graph["dbproxy.frontend.server"]
    assert "dbproxy.frontend.session" in dbproxy_graph["dbproxy.frontend.server"]


def test_no_import_cycles_in_dbproxy(dbproxy_graph: dict[str, set[str]]) -> None:
    assert find_cycles(dbproxy_graph) == []


def test_imports_follow_the_layer_order(dbproxy_graph: dict[str, set[str]]) -> None:
    folders = {p.name for p in (ROOT / "dbproxy").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(LAYERS) - {""}, "every folder of dbproxy has a place in LAYERS (and only those)"
    assert layer_violations(dbproxy_graph) == []


def test_every_folder_says_what_it_owns_and_may_import() -> None:
    for init in sorted((ROOT / "dbproxy").glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert doc, f"{init.relative_to(ROOT)} has no docstring"
        if init.parent.name != "protocol":
            assert "May import" in doc or "Imports nothing" in doc, f"{init.relative_to(ROOT)} says nothing of imports"
    listed = ast.get_docstring(ast.parse((ROOT / "dbproxy" / "__init__.py").read_text())) or ""
    order = [m.group(1) for m in re.finditer(r"^\s{4}(\w+)/", listed, re.M)]
    assert order == LAYERS[1:], "dbproxy/__init__.py lists the folders in the layer order"


@pytest.mark.parametrize("package", sorted(ALLOWED_TOP))
def test_top_level_packages_import_one_way(package: str) -> None:
    mods = modules(package)
    bad = []
    for name, path in mods.items():
        for dep in imports_of(path, name, mods):
            top = dep.split(".")[0]
            if top in ALLOWED_TOP[package]:
                continue
            if name == BENCH_ENTRY and top == "dbproxy_benchmarks":
                continue
            bad.append(f"{name} imports {dep}")
    assert bad == []


def test_benchmarks_import_each_other_relatively() -> None:
    """Installed, `benchmarks/` is the package `dbproxy_benchmarks`: an absolute `benchmarks.x`
    import would work in the checkout and break in the wheel."""
    bad = []
    for name, path in modules("benchmarks").items():
        for node in ast.walk(ast.parse(path.read_text())):
            absolute = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            bad += [f"{name} imports {m}" for m in absolute if m.split(".")[0] == "benchmarks"]
    assert bad == []


def test_the_wheel_lists_every_package() -> None:
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    renamed = {v: k for k, v in conf.get("package-dir", {}).items()}
    found = set()
    for top in ("dbproxy", "inverse", "sandbox", "benchmarks"):
        for init in (ROOT / top).rglob("__init__.py"):
            parts = list(init.parent.relative_to(ROOT).parts)
            parts[0] = renamed.get(parts[0], parts[0])
            found.add(".".join(parts))
    assert set(conf["packages"]) == found
    assert "benchmarks" not in conf["packages"]


def test_readme_architecture_tree_matches_the_folders() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Architecture", 1)[1].split("\n## ", 1)[0]
    tree = section.split("```", 2)[1]
    named = set(re.findall(r"^  (\w+)/", tree, re.M))  # dbproxy's folders, indented under dbproxy/
    folders = {p.name for p in (ROOT / "dbproxy").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert named == folders
    for top in ("inverse/", "sandbox/", "tests/", "benchmarks/", "docker/"):
        assert top in tree
