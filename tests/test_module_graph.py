"""The house's shape, read from the code's own imports: no circle anywhere, the fast
path reached only through its seam, and a top level of commands."""

import ast
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("encoder_transformer", "decoder_transformer", "machine_translation")
FAST = "machine_translation.inference.fast"


def module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Every module of the three packages → the project modules it imports
    (anywhere in the file, function bodies included)."""
    paths = [p for package in PACKAGES for p in (PROJECT_ROOT / package).rglob("*.py")]
    modules = {module_name(path): path for path in paths}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [node.module] + [
                    f"{node.module}.{a.name}" for a in node.names
                ]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            imported |= {t for t in targets if t in modules and t != name}
        graph[name] = imported
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle, as the modules around it, or None.

    >>> find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}})
    ['a', 'b', 'c', 'a']
    >>> find_cycle({"a": {"b"}, "b": set()}) is None
    True
    """
    state: dict[str, str] = {}  # "open" while on the path, then "done"
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph.get(node, ())):
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


def test_the_module_graph_has_no_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_only_the_seam_imports_the_fast_path():
    """Outside ``fast/`` only the decoding set-up and the commands name it."""
    allowed = {
        "machine_translation.inference.decoding_setup",
        "machine_translation.translate",
        "machine_translation.evaluate",
        "machine_translation.sample",
    }
    for module, imported in import_graph().items():
        if module.startswith(FAST) or module in allowed:
            continue
        reaching = {t for t in imported if t == FAST or t.startswith(FAST + ".")}
        assert not reaching, f"{module} imports {reaching}"


def test_training_never_loads_the_fast_path():
    code = (
        "import sys, machine_translation.train, machine_translation.training.recipes\n"
        f"print(sorted(m for m in sys.modules if m.startswith({FAST!r})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=PROJECT_ROOT,
    )
    assert result.stdout.strip() == "[]"


def test_the_top_level_holds_commands():
    """Each top-level module is a command with ``main`` (and the model, by design)."""
    top = PROJECT_ROOT / "machine_translation"
    for path in sorted(top.glob("*.py")):
        if path.stem in ("__init__", "model"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {getattr(node, "name", None) for node in tree.body}
        assert "main" in names, f"{path.name} is not a command"
