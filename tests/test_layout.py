"""Imports point one way: each module imports only from its own layer or the layers below (docs/layout.md)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "hf_sinklora"

# top-level unit (package or module) -> layer, as docs/layout.md lists them
LAYERS = {
    "_checks": 1, "_lazy": 1, "_paths": 1, "_warnings": 1, "data": 1, "cache": 1,
    "attention": 2, "rope": 2,
    "hub": 3,
    "training": 4, "evaluation": 4,
    "experiment": 5,
    "demo": 6, "cli": 6,
}


def _unit(module_path: Path) -> str:
    return module_path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _imported_units(module_path: Path) -> set[str]:
    """Top-level units of hf_sinklora imported by a module (relative or absolute imports)."""
    tree = ast.parse(module_path.read_text())
    depth = len(module_path.relative_to(PACKAGE).parts) - 1  # 0 for modules directly in the package
    units = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(module_path.relative_to(PACKAGE).parts[: depth - (node.level - 1)])
                target = base + (node.module.split(".") if node.module else [])
                names = [target] if target else [[alias.name] for alias in node.names]
                units.update(parts[0].removesuffix(".py") for parts in names if parts)
            elif node.module and node.module.split(".")[0] == "hf_sinklora":
                parts = node.module.split(".")[1:] or [alias.name for alias in node.names]
                units.add(parts[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "hf_sinklora" and len(parts) > 1:
                    units.add(parts[1])
    return units


def test_every_unit_has_a_layer():
    units = {_unit(path) for path in PACKAGE.rglob("*.py") if path.name != "__init__.py" or path.parent != PACKAGE}
    assert units <= set(LAYERS), f"add {sorted(units - set(LAYERS))} to docs/layout.md and LAYERS"


def test_imports_point_down():
    upward = []
    for path in PACKAGE.rglob("*.py"):
        if path.parent == PACKAGE and path.name == "__init__.py":
            continue  # the package's public face imports from everywhere
        unit = _unit(path)
        for imported in _imported_units(path) - {unit}:
            if LAYERS.get(imported, 0) > LAYERS[unit]:
                upward.append(f"{path.relative_to(PACKAGE)} imports {imported} (layer {LAYERS[imported]} > {LAYERS[unit]})")
    assert not upward, "\n".join(upward)


def test_no_module_imports_the_package_root():
    offenders = [str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
                 if path.name != "__init__.py" and any(
                     isinstance(node, ast.Import) and any(alias.name == "hf_sinklora" for alias in node.names)
                     for node in ast.walk(ast.parse(path.read_text())))]
    assert not offenders, offenders


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(module_path: Path, known: set[str]) -> set[str]:
    """Modules of hf_sinklora that a module imports anywhere in it (function-level imports included),
    as dotted names relative to the package ("hub.loading")."""
    package = _module_name(module_path).split(".") if module_path.name == "__init__.py" else \
        _module_name(module_path).split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(module_path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
            elif node.module and node.module.split(".")[0] == "hf_sinklora":
                base = []
            else:
                continue
            module = node.module.split(".") if node.module else []
            if not node.level:
                module = module[1:]
            target = ".".join(base + module)
            for alias in node.names:  # `from . import x` may name a module
                candidate = f"{target}.{alias.name}" if target else alias.name
                found.add(candidate if candidate in known else target)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".", 1)[1] for a in node.names if a.name.startswith("hf_sinklora."))
    return {m for m in found if m in known}


def test_no_two_modules_import_each_other():
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE or p.name != "__init__.py"}
    imports = {name: _imported_modules(path, set(paths)) for name, path in paths.items()}
    mutual = sorted({tuple(sorted((a, b))) for a, targets in imports.items() for b in targets
                     if a != b and a in imports.get(b, set())})
    assert not mutual, f"modules that import each other: {mutual}"
