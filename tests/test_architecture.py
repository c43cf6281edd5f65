"""The shape of the code, checked: layers without import circles, one home for the wire
contract, one home for the AMQP client library, modules a reader can hold in their head."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "choreo"
MAX_LINES = 420  # "aim for modules under ~400 lines"


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(module: str) -> set[str]:
    """The choreo modules ``module`` imports, at run time or for type checking alike."""
    path = MODULES[module]
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in MODULES)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                found.add(candidate if candidate in MODULES else target)
    return {name for name in found if name in MODULES and name != module}


def _cycles() -> list[list[str]]:
    graph = {module: _imports(module) for module in MODULES}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target, stack)
        stack.pop()
        state[module] = 2

    for module in MODULES:
        if module not in state:
            visit(module, [])
    return cycles


def test_the_import_graph_has_no_circle() -> None:
    """No module of choreo imports, even for type checking only, one that imports it back."""
    assert _cycles() == []


def test_the_cycle_finder_sees_a_circle(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above can fail: a circle through a type-only import is found."""
    real = _imports
    monkeypatch.setattr(
        "tests.test_architecture._imports",
        lambda m: real(m) | ({"choreo.bus"} if m == "choreo.wire" else set()),
    )
    assert any("choreo.wire" in cycle and "choreo.bus" in cycle for cycle in _cycles())


# message headers; x-choreo-queue is an AsyncAPI document extension, not a header
HEADER_LITERAL = re.compile(r"""["']x-(?:choreo-(?!queue["'])[a-z-]+|causation-id)["']""")


def test_header_names_are_spelled_only_in_wire() -> None:
    """Every x-choreo-* and x-causation-id name comes from choreo/wire.py."""
    offenders = [
        f"{path.relative_to(ROOT.parent)}: {match.group(0)}"
        for path in MODULES.values()
        if path.name != "wire.py"
        for match in HEADER_LITERAL.finditer(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []
    assert len(HEADER_LITERAL.findall((ROOT / "wire.py").read_text(encoding="utf-8"))) >= 10


def test_only_the_rabbitmq_transport_imports_the_amqp_libraries() -> None:
    """aio_pika, aiormq and pamqp are imported in choreo/transports/rabbitmq/ only."""
    libraries = ("aio_pika", "aiormq", "pamqp")
    offenders = []
    for module, path in MODULES.items():
        if module.startswith("choreo.transports.rabbitmq"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )
            offenders += [f"{module}: {n}" for n in names if n.split(".")[0] in libraries]
    assert offenders == []


def test_modules_stay_small() -> None:
    """Each module stays under ~400 lines."""
    sizes = {m: len(p.read_text(encoding="utf-8").splitlines()) for m, p in MODULES.items()}
    assert {m: n for m, n in sizes.items() if n > MAX_LINES} == {}


def test_where_things_are_is_findable_by_file_name() -> None:
    """Publish, route, retry, dead-letter, settle and every CLI command have their file."""
    for name in (
        "bus",  # publish
        "topology",  # route
        "retry",  # retry policy
        "_runtime.broker_retry",  # retry through the broker
        "_runtime.dispatch",
        "_runtime.settle",
        "_runtime.deadletter",
        "_runtime.responder",
        "wire",
        "dlq",
        "cli.run",
        "cli.topology",
        "cli.dlq",
        "cli.publish",
        "cli.tooling",
    ):
        assert f"choreo.{name}" in MODULES
