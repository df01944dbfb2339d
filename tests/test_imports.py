"""The package's modules import one way: no circle in the graph of `cam/`'s imports of its own
modules, imports inside functions counted too."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cam"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """{module: the package's modules it imports anywhere in its file}; `from . import x` names the
    submodule x where there is one, `from .x import name` the module x."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    child = f"{target}.{alias.name}"
                    found.add(child if child in modules else target)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                found |= {n for n in names if n in modules}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of imports, as the modules along it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module):
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (circle := visit(target)):
                return circle
        state[module] = 2
        path.pop()
        return None

    for module in sorted(graph):
        if module not in state and (circle := visit(module)):
            return circle
    return None


def test_the_finder_sees_a_circle_through_an_import_inside_a_function():
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_package_imports_run_one_way():
    graph = import_graph()
    assert {"cam.checkpoint", "cam.loading", "cam.detector", "cam.train_detector"} <= set(graph)
    assert graph["cam.detector"] == set()  # the network is a leaf
    assert "cam.detector" not in graph["cam.models"] and "cam.models" in graph["cam.checkpoint"]
    assert find_circle(graph) is None, " -> ".join(find_circle(graph))
