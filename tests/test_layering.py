"""Who may import whom (DESIGN.md, "Layout"), read from every module's imports with ``ast``.

- ``gateway/core`` (the floor) imports only ``registry`` and ``schemas`` (and itself);
- ``agents`` imports ``gateway.core``, ``registry``, ``schemas`` and itself;
- each ``protocols/<p>`` imports ``gateway.core``, ``agents``, ``registry``, ``schemas`` and
  itself, never another adapter and never the roof;
- only the roof (``gateway`` outside ``core``) imports ``protocols``;
- ``registry`` imports only ``schemas`` and itself, ``schemas`` only itself;
- imports are absolute (no ``from . import``), at any depth of the module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

LAYERS = ("gateway", "protocols", "registry", "agents", "schemas")


def modules() -> list[Path]:
    return sorted(p for top in LAYERS for p in (REPO / top).rglob("*.py"))


def imports(path: Path) -> list[tuple[str, int]]:
    """(module, level) of every import in the file; level > 0 for relative imports."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(alias.name, 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append((node.module or "", node.level))
    return out


def allowed(importer: tuple[str, ...], target: str) -> bool:
    """Whether a module under ``importer`` (its path parts) may import ``target``."""
    top = target.split(".")[0]
    if top not in LAYERS:
        return True  # the standard library and third-party packages
    if importer[0] == "gateway" and importer[1:2] == ("core",):
        return target.startswith("gateway.core") or top in ("registry", "schemas")
    if importer[0] == "gateway":
        return True  # the roof
    if importer[0] == "agents":
        return target.startswith("gateway.core") or top in ("agents", "registry", "schemas")
    if importer[0] == "protocols":
        own = f"protocols.{importer[1]}" if len(importer) > 2 else "protocols"
        if top == "protocols":
            return target == own or target.startswith(own + ".")
        return target.startswith("gateway.core") or top in ("agents", "registry", "schemas")
    if importer[0] == "registry":
        return top in ("registry", "schemas")
    return top == "schemas"  # schemas, the bottom


def violations() -> list[str]:
    bad = []
    for path in modules():
        parts = path.relative_to(REPO).with_suffix("").parts
        for target, level in imports(path):
            if level:
                bad.append(f"{'/'.join(parts)}.py: relative import from {'.' * level}{target}")
            elif not allowed(parts, target):
                bad.append(f"{'/'.join(parts)}.py imports {target}")
    return bad


def test_every_module_keeps_the_layering():
    assert violations() == []


@pytest.mark.parametrize(
    "importer, target, ok",
    [
        (("gateway", "core", "runtime"), "agents.worker", False),
        (("gateway", "core", "runtime"), "gateway.cluster", False),
        (("gateway", "core", "runtime"), "protocols.mcp", False),
        (("gateway", "core", "runtime"), "registry.service", True),
        (("agents", "worker"), "gateway.app", False),
        (("agents", "worker"), "protocols.a2a.client", False),
        (("protocols", "mcp", "methods"), "protocols.a2a.wire", False),
        (("protocols", "mcp", "methods"), "gateway.connectors", False),
        (("protocols", "mcp", "methods"), "protocols.mcp.wire", True),
        (("protocols", "mcp", "methods"), "agents.worker", True),
        (("registry", "index"), "gateway.core.routing", False),
        (("schemas", "task"), "registry.identity", False),
        (("registry", "store"), "schemas.task", True),
        (("gateway", "app"), "protocols.mcp", True),
    ],
)
def test_the_rules_refuse_what_they_should(importer, target, ok):
    assert allowed(importer, target) is ok


@pytest.mark.parametrize("name", ["a2a", "acp", "anp", "mcp"])
def test_every_adapter_exports_the_same_surface(name):
    import importlib

    adapter = importlib.import_module(f"protocols.{name}")
    options = f"{name.upper()}Options"
    assert sorted(adapter.__all__) == sorted(["Connector", options, "mount", "routes"])
    assert callable(adapter.routes) and callable(adapter.mount)
    assert callable(adapter.Connector.from_record) and hasattr(getattr(adapter, options), "from_env")
