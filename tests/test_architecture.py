"""The shape of the code: imports point one way (records at the bottom; adapters and kernels; the
harness; reports beside them, torch-free; the command line and asv glue on top), inside the harness
too (its shared defaults and errors; the case language; measuring and the cuDNN release tooling; the
front ends), no module imports itself back through a cycle, and the modules that must work without torch
(records, reports, the batch grammar, the case language, asv's per-parameter glue) really import and
render without it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("records", "adapters", "kernels", "harness", "reports", "benchmarks")

LAYER = {"records": 0, "kernels": 1, "adapters": 2, "reports": 2, "harness": 3, "benchmarks": 4}
"""A package may import its own layer's modules of its own package, and packages of lower layers
(reports and adapters share a layer but never import each other)."""
HARNESS_LAYER = {"harness.defaults": 0, "harness.errors": 0, "harness.cases": 1, "harness.measure": 2,
                 "harness.releases": 2, "harness.frontends": 3}
"""The same rule inside the harness, by sub-package (or top-level module): the shared defaults and errors at
the bottom, then the case language, then measuring and the cuDNN release tooling (which run cells in
their own processes and never import each other), then the command line and asv glue on top."""
REPORTS_IMPORTERS = ("harness.frontends", "harness.releases")
"""The command line (with its progress display), asv glue and the cuDNN release tooling (its releases
page, its noise bands): the only harness sub-packages that may import reports."""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _project_imports(path: Path) -> set[str]:
    """Project modules a file imports at any level (type-checking-only imports excluded)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    guarded = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            guarded.update(id(child) for child in ast.walk(node))
    found = set()
    for node in ast.walk(tree):
        if id(node) in guarded:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name.split(".")[0] in PACKAGES)
    return found


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")}


def _harness_part(module: str) -> str:
    """``harness.cases.sweep`` -> ``harness.cases``; ``harness.defaults`` -> itself."""
    return ".".join(module.split(".")[:2])


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        targets = {_resolve(name, modules) for name in _project_imports(path)}
        graph[module] = {target for target in targets if target and target != module}
    return graph


def test_imports_point_down():
    upward = []
    for module, targets in _graph().items():
        package = module.split(".")[0]
        for target in targets:
            other = target.split(".")[0]
            if other == package:
                continue
            if LAYER[other] >= LAYER[package]:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports that point up or sideways:\n" + "\n".join(sorted(upward))


def test_harness_imports_point_down():
    graph = _graph()
    parts = {_harness_part(module) for module in graph if module.startswith("harness.")}
    assert parts == set(HARNESS_LAYER), "a harness sub-package without a layer, or a layer without one"
    upward = []
    for module, targets in graph.items():
        if not module.startswith("harness."):
            continue
        part = _harness_part(module)
        for target in targets:
            if not target.startswith("harness.") or _harness_part(target) == part:
                continue
            if HARNESS_LAYER[_harness_part(target)] >= HARNESS_LAYER[part]:
                upward.append(f"{module} -> {target}")
    assert not upward, "harness imports that point up or sideways:\n" + "\n".join(sorted(upward))


def test_only_the_top_of_the_harness_imports_reports():
    offenders = [f"{module} -> {target}" for module, targets in _graph().items() for target in targets
                 if module.startswith("harness.") and target.split(".")[0] == "reports"
                 and _harness_part(module) not in REPORTS_IMPORTERS]
    assert not offenders, "harness modules importing reports:\n" + "\n".join(sorted(offenders))


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


TORCH_FREE = ["records", "records.schema", "records.store", "adapters.grammar", "harness.cases.sweep",
              "harness.frontends.asv_suite", "harness.errors", "reports", "reports.model", "reports.compare",
              "reports.text", "reports.capability", "reports.tables", "reports.plots", "reports.html",
              "reports.machines", "reports.releases", "reports.cli", "benchmarks.bench_decode",
              "benchmarks.bench_prefill", "benchmarks.bench_mixed", "benchmarks.bench_cases", "harness.cases.models",
              "harness.cases.sweepfile", "harness.cases.selection", "harness.cases.reproducer", "harness.cases.shard",
              "harness.defaults"]

BLOCK_TORCH = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch.") or name in ("triton", "cudnn", "flash_attn", "jax"):
            raise ImportError(f"{name} is blocked: this module must work without it")
sys.meta_path.insert(0, _Block())
"""


@pytest.mark.parametrize("module", TORCH_FREE)
def test_module_imports_without_torch(module):
    if module.startswith("benchmarks."):
        from harness.frontends import asv_suite

        asv_suite.backend_names()  # asv's processes read the names discovery wrote once (with torch)
    code = BLOCK_TORCH + f"import {module}\nassert 'torch' not in sys.modules\n"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_report_renders_without_torch(tmp_path):
    """The published H100 results render to HTML (and the comparison of two folders to text) in a
    process where torch cannot be imported."""
    code = BLOCK_TORCH + f"""
from reports.model import load_results
from reports.html import render_report
from reports.compare import compare_folders, format_comparison_text
results = load_results({str(ROOT / 'results' / 'h100-repeat' / 'short-b')!r})
out = render_report(results, {str(tmp_path / 'r.html')!r})
text = format_comparison_text(compare_folders({str(ROOT / 'results' / 'h100-repeat' / 'short-a')!r},
                                              {str(ROOT / 'results' / 'h100-repeat' / 'short-b')!r}))
assert 'torch' not in sys.modules and out.stat().st_size > 10000 and 'Cells:' in text
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]


CUDNN_RELEASE_CODE = ("harness/releases/", "reports/releases.py")
"""The cuDNN release tooling (fetch a release, run a sweep on it, compare and bisect releases) and its
releases page are about that one library by definition; every other shared module is backend-neutral."""


def test_shared_code_names_no_backend():
    """What the shared code needs about a backend is declared on its adapter: no harness, report or
    record module holds a registered backend's name as a string (tests and adapters may)."""
    from adapters.base import adapter_classes

    names = set(adapter_classes())
    offenders = []
    for package in ("harness", "reports", "records"):
        for path in (ROOT / package).rglob("*.py"):
            if path.relative_to(ROOT).as_posix().startswith(CUDNN_RELEASE_CODE):
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and node.value in names:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert not offenders, "\n".join(offenders)
