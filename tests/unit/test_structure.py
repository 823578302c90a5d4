"""The package's import structure (docs/ARCHITECTURE.md): no two modules import each other,
directly or in a loop, also not through an import inside a function."""

import ast
import re
from pathlib import Path

from tests.helpers import ROOT

PKG = ROOT / "esc_dist"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that ``path`` imports, anywhere in it."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:  # a submodule named in the import, else the module itself
                sub = f"{target}.{a.name}"
                found.add(sub if sub in modules else target)
    return {m for m in found if m in modules and m != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    files = sorted(PKG.rglob("*.py"))
    modules = {module_name(f) for f in files}
    # a package's face (its __init__) hands on names of its own modules: importing it is
    # importing them, but it is not imported back by them
    graph = {module_name(f): imports(f, modules) for f in files}
    assert cycles(graph) == []


def test_the_check_sees_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# A path inside a run directory, spelled out: `/ "models"`, `"reports/..."`, `$run_dir/reports/`
_RUN_PATH_PY = re.compile(
    r'/ "(models|prefdial|ipm|predictions|reports|logs|\.pipeline)"'
    r'|"recipe\.yaml"|output_dir\}/|\}/(models|prefdial|ipm|predictions|reports|logs)/'
    r'|"(models|prefdial|ipm|predictions|reports)/(?![\w/]*\.py")'
)
_RUN_PATH_SH = re.compile(r"\}?/(reports|predictions|models|prefdial|ipm|logs)/|recipe\.yaml")


def run_path_spellings(files, pattern) -> list[str]:
    found = []
    for f in files:
        for i, line in enumerate(f.read_text().splitlines(), 1):
            if pattern.search(line.split("#", 1)[0]):
                found.append(f"{f.relative_to(ROOT)}:{i}: {line.strip()}")
    return found


def test_the_run_layout_is_spelled_in_one_place():
    """Every path into a run directory comes from esc_dist/layout.py (RunLayout): the package,
    the studies and the scripts (which ask `esc-dist stage out`) spell none of their own."""
    py = [
        f
        for d in ("esc_dist", "benchmarks", "experiments")
        for f in sorted((ROOT / d).rglob("*.py"))
        if f != PKG / "layout.py"
    ]
    sh = [f for d in ("slurm", "launch", "benchmarks") for f in sorted((ROOT / d).glob("*.sh"))]
    sh += sorted((ROOT / "slurm").glob("*.sbatch"))
    found = run_path_spellings(py, _RUN_PATH_PY) + run_path_spellings(sh, _RUN_PATH_SH)
    assert not found, "run paths spelled outside esc_dist/layout.py:\n" + "\n".join(found)
    # the check sees a spelling
    sample = ROOT / "tests" / "unit" / "test_structure.py"
    assert run_path_spellings([sample], re.compile(r'"reports/comparison"'))
