"""margin's layering, checked on the source: lower layers never import upper ones.

From the bottom: the leaf modules (the request/response types, errors, the settings base,
units, the task set, the JSON body parser, the process helpers) → the serving packages (upstreams, caches,
routing, limits, metering, observe, batching, compression, auth, embedding) and the
planner → the gateway → the CLI. ``bench`` sits beside the top: nothing ``margin serve``
runs imports it. Every import counts, including those inside functions.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "margin"

LEAVES = {"types": set(), "errors": set(), "configbase": set(), "tasks": set(),
          "units": {"margin.errors"}, "jsonbody": {"margin.errors"},
          "procs": {"margin.errors"}, "attribution": {"margin.errors"}, "memory": set()}
SERVING = ("upstreams", "cache", "routing", "limits", "metering", "observe", "batching",
           "compression", "auth", "plan", "embedding", "quality", "experiments")
UPPER = ("margin.gateway", "margin.bench", "margin.cli")
# Neither knows the other: the router stage (in the gateway) combines them.
APART = {"routing": ("margin.upstreams",), "upstreams": ("margin.routing",)}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            # "from margin import gateway" names a module too
            if node.module == "margin":
                found += [(node.lineno, f"margin.{a.name}") for a in node.names]
    return found


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def violations() -> list[str]:
    out: list[str] = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        top = rel.parts[0].removesuffix(".py")
        where = f"src/margin/{rel}"
        for line, module in _imports(path):
            if not module.startswith("margin"):
                continue
            if top in LEAVES and len(rel.parts) == 1 and module not in LEAVES[top]:
                out.append(f"{where}:{line}: the leaf module margin.{top} imports {module}")
            if top in SERVING and _under(module, UPPER):
                out.append(f"{where}:{line}: margin.{top} imports the upper layer {module}")
            if top in APART and _under(module, APART[top]):
                out.append(f"{where}:{line}: margin.{top} imports {module}")
    return out


def test_no_lower_layer_imports_an_upper_one():
    assert violations() == []


def test_the_checker_sees_imports_inside_functions(tmp_path, monkeypatch):
    # A rule that cannot fail is no rule: plant a violation and watch it being found.
    pkg = tmp_path / "margin" / "cache"
    pkg.mkdir(parents=True)
    (tmp_path / "margin" / "types.py").write_text("import os\n")
    (pkg / "x.py").write_text("def f():\n    from margin.gateway.app import GatewayApp\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path / "margin")
    assert violations() == ["src/margin/cache/x.py:2: margin.cache imports the upper layer "
                            "margin.gateway.app"]
