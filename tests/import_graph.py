"""The project's static import graph (an AST walk, no imports run): which cxrdet modules a
file imports, at module level or inside functions, and the source files a script needs.

A registry package that finds its members at run time (`pkgutil.iter_modules(__path__)` in
its __init__: cxrdet.families, cxrdet.formats) counts as importing every module in it.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def module_file(module: str) -> Path | None:
    """The source file of a cxrdet module (a package's __init__.py), None when it is not one."""
    base = SRC.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: Path) -> str:
    parts = path.resolve().relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def imported_modules(path: Path) -> frozenset[str]:
    """The cxrdet modules `path` imports (`from a import b`: a.b when that is a module, else a)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name(path) if path.is_relative_to(SRC) else ""
    if package and path.name != "__init__.py":
        package = package.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if module_file(f"{base}.{alias.name}") else base)
    if "pkgutil.iter_modules(__path__)" in path.read_text(encoding="utf-8"):
        found |= {module_name(member) for member in path.parent.glob("*.py") if member != path}
    return frozenset(m for m in found if m == "cxrdet" or m.startswith("cxrdet."))


def with_packages(module: str) -> list[str]:
    """`module` and every package above it: importing a.b.c runs a and a.b's __init__ too."""
    parts = module.split(".")
    return [".".join(parts[:k]) for k in range(1, len(parts) + 1)]


def source_closure(script: Path) -> set[Path]:
    """Every cxrdet source file that running `script` can import."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        path = todo.pop()
        for module in imported_modules(path):
            for name in with_packages(module):
                found = module_file(name)
                if found is not None and found not in seen:
                    seen.add(found)
                    todo.append(found)
    return seen
