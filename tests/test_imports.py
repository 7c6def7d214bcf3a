"""The package's import structure: no import cycle inside `slowed`, and lazy top-level exports (PEP 562)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "slowed"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every module name imported anywhere in `tree` (also inside functions), except under `if TYPE_CHECKING:`."""
    names: set[str] = set()
    stack = [tree]
    while stack:
        node = stack.pop()
        if _is_type_checking_block(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            names |= {base} | {f"{base}.{alias.name}" for alias in node.names}
        stack.extend(ast.iter_child_nodes(node))
    return names


def import_graph() -> dict[str, set[str]]:
    """slowed module -> the slowed modules it imports (a name resolves to its longest module prefix)."""
    paths = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for module, path in paths.items():
        edges = set()
        for name in _imported_names(
            ast.parse(path.read_text(encoding="utf-8")), module, path.name == "__init__.py"
        ):
            while name and name not in paths:
                name = name.rpartition(".")[0]
            if name and name != module:
                edges.add(name)
        graph[module] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search with colours)."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_walker_sees_function_level_and_relative_imports():
    tree = ast.parse("def f():\n    from slowed.data import x\nfrom . import y\nfrom .z import w\n")
    names = _imported_names(tree, "slowed.evaluation.api", is_package=False)
    assert {"slowed.data", "slowed.evaluation.y", "slowed.evaluation.z"} <= names
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_inside_slowed():
    graph = import_graph()
    assert {"slowed.data", "slowed.trainer", "slowed.evaluation.safety"} <= set(graph)
    assert find_cycle(graph) is None


@pytest.mark.parametrize("module", ["slowed", "slowed.masking", "slowed.data", "slowed.evaluation"])
def test_light_modules_do_not_import_trl(module):
    code = f"import sys, {module}; print('trl' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_top_level_exports_are_the_owning_modules_objects():
    import slowed
    from slowed import SLowEDConfig, SLowEDTrainer, SlowTuningCallback
    from slowed.config import SLowEDConfig as config_class
    from slowed.slow_tuning import SlowTuningCallback as callback_class
    from slowed.trainer import SLowEDTrainer as trainer_class

    assert (SLowEDConfig, SLowEDTrainer, SlowTuningCallback) == (config_class, trainer_class, callback_class)
    assert set(slowed.__all__) == {*slowed._EXPORTS, "__version__"}
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        slowed.nothing  # noqa: B018
