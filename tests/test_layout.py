"""The package's shape: the library never imports the commands, and no module imports itself
back through others (function-level imports included: they are imports all the same)."""

import ast
import re
from pathlib import Path

import pytest

import yolov3

SRC = Path(yolov3.__file__).resolve().parent
COMMANDS = "yolov3.commands"


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """yolov3 module -> the yolov3 modules it imports anywhere in its source."""
    modules = {module_name(p): p for p in SRC.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.split(".")[0] == "yolov3"}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "yolov3":
                # `from yolov3.data import timing` imports the module yolov3.data.timing
                subs = {f"{node.module}.{a.name}" for a in node.names} & set(modules)
                deps |= subs or {node.module}
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_library_does_not_import_the_commands():
    graph = import_graph()
    library = {m for m in graph if not m.startswith(COMMANDS) and m != "yolov3.__main__"}
    assert len(library) > 20 and any(m.startswith(COMMANDS + ".") for m in graph)  # the walk saw the package
    wrong = {m: sorted(d for d in graph[m] if d.startswith(COMMANDS)) for m in library}
    assert not {m: d for m, d in wrong.items() if d}


def test_there_are_no_import_cycles():
    assert find_cycle(import_graph()) is None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_docs_layout_lists_every_module():
    """docs/layout.md is the map a newcomer reads: every module is on it, and nothing that is gone."""
    page = Path(__file__).resolve().parents[1] / "docs" / "layout.md"
    if not page.is_file():
        pytest.skip("docs/layout.md is not in this checkout")
    text = page.read_text()
    tree = text[text.index("```") + 3 : text.index("```", text.index("```") + 3)]
    listed = set(re.findall(r"[A-Za-z_]+\.py", tree))
    modules = {p.name for p in SRC.rglob("*.py") if p.name != "__init__.py"}
    synthetic = {p.name for p in (SRC / "data" / "synthetic").glob("*.py") if p.name != "__init__.py"}
    missing = {m for m in modules - listed if m not in synthetic or "synthetic/" not in tree}
    assert not missing, f"docs/layout.md does not list {sorted(missing)}"
    repo = SRC.parents[1]
    elsewhere = {p.name for d in ("bench", "scripts", "tests") for p in (repo / d).glob("*.py")}
    gone = listed - modules - elsewhere
    assert not gone, f"docs/layout.md lists modules that do not exist: {sorted(gone)}"
