"""The three floors and their imports: ``lab`` → ``gateway`` → ``monitors``, never back, and no two of the
gateway's packages importing each other (read from the source, so that a lazy import inside a function
counts too)."""

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLOORS = ("lab", "gateway", "monitors")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = ROOT / name.replace(".", "/")
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _imported(path: Path) -> set[str]:
    """The project modules ``path`` imports, anywhere in the file."""
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if _is_module(f"{base}.{alias.name}") else base)
    return {name for name in found if name.split(".")[0] in FLOORS}


def import_graph() -> dict[str, set[str]]:
    """Every project module and the project modules it imports."""
    return {
        _module_name(path): _imported(path)
        for floor in FLOORS
        for path in sorted((ROOT / floor).rglob("*.py"))
        if "__pycache__" not in path.parts
    }


def _unit(module: str) -> str:
    """The unit a module belongs to: a gateway subpackage or top-level module (``gateway.proxy``,
    ``gateway.metrics``), otherwise its floor."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "gateway" and len(parts) > 1 else parts[0]


def _unit_graph() -> dict[str, set[str]]:
    units: dict[str, set[str]] = defaultdict(set)
    for module, imports in import_graph().items():
        for imported in imports:
            if _unit(imported) != _unit(module):
                units[_unit(module)].add(_unit(imported))
    return units


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in list(graph):
        if node not in index:
            visit(node)
    return found


def test_monitors_import_nothing_from_the_floors_above() -> None:
    offenders = {
        module: sorted(name for name in imports if not name.startswith("monitors"))
        for module, imports in import_graph().items()
        if module.startswith("monitors")
    }
    assert {module: names for module, names in offenders.items() if names} == {}


def test_the_gateway_imports_nothing_from_lab() -> None:
    offenders = {
        module: sorted(name for name in imports if name.startswith("lab"))
        for module, imports in import_graph().items()
        if module.startswith("gateway")
    }
    assert {module: names for module, names in offenders.items() if names} == {}


def test_no_import_cycle_between_the_gateways_packages() -> None:
    graph = _unit_graph()
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_two_way_import() -> None:
    assert _cycles({"gateway.a": {"gateway.b"}, "gateway.b": {"gateway.a"}, "gateway.c": {"gateway.a"}}) == [
        ["gateway.a", "gateway.b"]
    ]


def _declared_public(module: str) -> set[str] | None:
    """The module's ``__all__``, or None when it declares none."""
    tree = ast.parse((ROOT / (module.replace(".", "/") + ".py")).read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return {element.value for element in node.value.elts}
    return None


def test_modules_import_from_each_other_only_what_is_declared_public() -> None:
    """Private by underscore, public by ``__all__``: what one module takes from another is on its list."""
    offenders = []
    for floor in FLOORS:
        for path in sorted((ROOT / floor).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if not (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module):
                    continue
                if (
                    node.module.split(".")[0] not in FLOORS
                    or not (ROOT / node.module.replace(".", "/")).with_suffix(".py").exists()
                ):
                    continue
                public = _declared_public(node.module) or set()
                offenders += [
                    f"{_module_name(path)}: {node.module}.{alias.name}"
                    for alias in node.names
                    if alias.name not in public
                ]
    assert offenders == []
