"""The import graph is a clean stack: config/data -> model/align -> train/infer -> analysis/study -> report/commands.

Every `viral` import in every module counts, including imports inside functions: a lower layer never
imports a higher one, no two modules import each other (directly or round a loop), and analysis and
inference use `viral.align` only through its public names.
"""

import ast
from pathlib import Path

import viral

SRC = Path(viral.__file__).parent

# (layer, module prefixes); the longest matching prefix decides a module's layer
LAYERS = [
    (0, ["viral", "viral.errors", "viral.config", "viral.data", "viral.parallel"]),
    (1, ["viral.model", "viral.families", "viral.align", "viral.connectors", "viral.runs", "viral.resilience",
         "viral.vlora"]),
    (2, ["viral.train", "viral.infer", "viral.vlora.train", "viral.vlora.predict", "viral.evaluate"]),
    (3, ["viral.analysis", "viral.study", "viral.sweep"]),
    (4, ["viral.report", "viral.commands", "viral.cli", "viral.demo"]),
]


def layer_of(module: str) -> int:
    best = max((prefix for _, prefixes in LAYERS for prefix in prefixes
                if module == prefix or module.startswith(prefix + ".")), key=len)
    return next(layer for layer, prefixes in LAYERS if best in prefixes)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The viral modules `path` imports (an `from package import name` of a submodule counts as that module)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules}
    return {module for module in found if module in modules and module != name}


def graph() -> dict[str, set[str]]:
    paths = sorted(SRC.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    return {module_name(path): imports_of(path, modules) for path in paths}


def test_no_lower_layer_imports_a_higher_one():
    bad = [f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
           for a, targets in graph().items() for b in targets if layer_of(b) > layer_of(a)]
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges[module]):
            if state.get(target) == 1:
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    # a package's __init__ importing its own submodules is not a loop between layers
    cycles = [c for c in cycles if not all(part.startswith(c.split(" -> ")[0]) for part in c.split(" -> "))]
    assert not cycles, "\n".join(cycles)


def test_analysis_and_inference_use_only_the_public_align_surface():
    reaching = [f"{a} imports {b}" for a, targets in graph().items() for b in targets
                if (a.startswith("viral.analysis") or a in ("viral.infer", "viral.vlora.predict"))
                and b.startswith("viral.align.")]
    assert not reaching, "\n".join(reaching)


def test_the_graph_sees_function_level_imports():
    edges = graph()
    assert "viral.parallel" in edges["viral.data.shapes"]  # imported inside a function
    assert "viral.connectors" in edges["viral.train"] and "viral.train" in edges["viral.vlora.train"]
