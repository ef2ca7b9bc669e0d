"""The package's layers: no module imports from a layer above its own (issue 17, item 1).

The order is read from docs/design.md's Layout section (a numbered list, bottom first), so the
document and the code cannot drift apart. Every module of `sase_deploy` is parsed with `ast`
and each import is checked, the lazy ones inside functions included: a lazy import keeps
start-up fast, it does not make an upward dependency acceptable.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import sase_deploy

PACKAGE = Path(sase_deploy.__file__).parent
DESIGN = Path(__file__).resolve().parents[1] / "docs" / "design.md"
ROOT = "__init__"  # how the layer list names the package's own `__init__` (the version)

# Imports that still point upwards, each with why it is not fixed yet. Empty: none remain.
ALLOWED: frozenset[tuple[str, str]] = frozenset()


def layer_order(design: str) -> dict[str, int]:
    """Layer index (0 = bottom) of each top-level name listed in the Layout section.

    Args:
        design: the text of docs/design.md; the list items are "N. `name` `name` — why".
    """
    section = design.split("## Layout", 1)[1].split("\n## ", 1)[0]
    order: dict[str, int] = {}
    for index, match in enumerate(re.finditer(r"^\d+\. (.*?) — ", section, re.M)):
        for name in re.findall(r"`([\w.]+)`", match.group(1)):
            order[name] = index
    return order


def module_name(path: Path) -> str:
    """`sase_deploy.engines.build` for PACKAGE/engines/build.py (packages: their folder)."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    """The top-level name a module belongs to: `engines` for `sase_deploy.engines.build`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ROOT


def imported_modules(module: str, source: str, is_package: bool, known: set[str]) -> list[str]:
    """Every `sase_deploy` module `source` imports, anywhere in it (functions included).

    Args:
        module: the importing module's dotted name (relative imports resolve against it).
        source: its Python text.
        is_package: whether it is a package's `__init__` (relative imports start there).
        known: every module of the package: `from pkg import name` counts as importing
            `pkg.name` when that is a module, else `pkg`.
    """
    base = module.split(".") if is_package else module.split(".")[:-1]
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            origin = node.module or ""
            if node.level:
                anchor = base[: len(base) - node.level + 1]
                origin = ".".join([*anchor, *([origin] if origin else [])])
            for alias in node.names:
                child = f"{origin}.{alias.name}"
                found.append(child if child in known else origin)
        elif (  # importlib.import_module("sase_deploy...."): an import all the same
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append(node.args[0].value)
    return [m for m in found if m == "sase_deploy" or m.startswith("sase_deploy.")]


def violations(
    module: str, source: str, order: dict[str, int], *, is_package: bool, known: set[str]
) -> list[str]:
    """What is wrong with one module's imports: upward imports and unplaced layers.

    Args:
        module: the module's dotted name.
        source: its Python text.
        order: `layer_order` of docs/design.md.
        is_package: whether it is a package's `__init__`.
        known: every module of the package (see `imported_modules`).
    """
    own = layer_of(module)
    if own not in order:
        return [f"{module}: its layer '{own}' is not in docs/design.md's layer list"]
    problems = []
    for target in imported_modules(module, source, is_package, known):
        layer = layer_of(target)
        if layer not in order:
            problems.append(f"{module} imports {target}: '{layer}' is not in the layer list")
        elif order[layer] > order[own] and (module, target) not in ALLOWED:
            problems.append(f"{module} ({own}) imports {target} ({layer}, a higher layer)")
    return problems


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


@pytest.fixture(scope="module")
def order() -> dict[str, int]:
    return layer_order(DESIGN.read_text())


def test_the_layer_list_is_read(order: dict[str, int]) -> None:
    assert order[ROOT] == order["errors"] == order["console"] == 0
    assert order["graph_io"] < order["runtime"] < order["models"] < order["export"]
    assert order["calibration"] < order["engines"] < order["report"] < order["deploy"]
    assert order["commands"] < order["cli"] == max(order.values())


def test_no_module_imports_a_higher_layer(order: dict[str, int]) -> None:
    modules = package_modules()
    known = set(modules)
    problems = [
        problem
        for module, path in modules.items()
        for problem in violations(
            module, path.read_text(), order, is_package=path.name == "__init__.py", known=known
        )
    ]
    assert problems == []


def test_every_allowed_exception_is_still_needed(order: dict[str, int]) -> None:
    modules = package_modules()
    known = set(modules)
    used = {
        (module, target)
        for module, path in modules.items()
        for target in imported_modules(module, path.read_text(), path.name == "__init__.py", known)
    }
    assert used >= ALLOWED, f"remove stale exceptions: {sorted(ALLOWED - used)}"


def test_the_cli_starts_without_the_heavy_backends() -> None:
    """Lazy imports stay lazy: `sase-deploy --help` and `models` load no ONNX, torch or ORT."""
    heavy = ("torch", "onnx", "onnxruntime", "onnx_graphsurgeon", "tensorrt", "polygraphy")
    code = f"import sys, sase_deploy.cli; print([m for m in {heavy!r} if m in sys.modules])"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"


FAKE = "sase_deploy.graph_io.fake"
KNOWN = {"sase_deploy.report.api", "sase_deploy.graph_io.load", "sase_deploy.errors"}


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("from sase_deploy.report.api import x\n", "sase_deploy.report.api"),
        ("def f():\n    import sase_deploy.report.api\n", "sase_deploy.report.api"),
        ("def f():\n    from ..report import api\n", "sase_deploy.report.api"),
        (
            "import importlib\nimportlib.import_module('sase_deploy.report.api')\n",
            "sase_deploy.report.api",
        ),
    ],
    ids=["top-level", "lazy", "relative", "import_module"],
)
def test_an_upward_import_is_reported_with_both_modules(
    order: dict[str, int], source: str, target: str
) -> None:
    found = violations(FAKE, source, order, is_package=False, known=KNOWN)
    assert len(found) == 1
    assert FAKE in found[0] and target in found[0]


def test_same_and_lower_layer_imports_pass(order: dict[str, int]) -> None:
    source = "from sase_deploy.graph_io.load import x\nfrom sase_deploy.errors import UserError\n"
    assert violations(FAKE, source, order, is_package=False, known=KNOWN) == []


def test_an_unplaced_layer_is_reported(order: dict[str, int]) -> None:
    found = violations("sase_deploy.newstage.api", "", order, is_package=False, known=KNOWN)
    assert found == [
        "sase_deploy.newstage.api: its layer 'newstage' is not in docs/design.md's layer list"
    ]
