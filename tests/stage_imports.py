"""The project modules a stage imports, directly or through other project modules (read with ast)."""
from __future__ import annotations

import ast
from pathlib import Path


def module_file(root: Path, name: str) -> Path | None:
    """The file of a project module (`tinym2net.x`, `pipelines.y`), or None for a third-party one."""
    parts = name.split(".")
    base = root / "src" if parts[0] == "tinym2net" else root if parts[0] == "pipelines" else None
    if base is None:
        return None
    path = base.joinpath(*parts)
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def _imports(root: Path, path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(root / "src" if "src" in path.parts else root).with_suffix("").parts)
    if path.name == "__init__.py":
        package = package.rsplit(".", 1)[0] + "." if False else package.removesuffix(".__init__")
    else:
        package = package.rsplit(".", 1)[0]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names.add(mod)
            names |= {f"{mod}.{a.name}" for a in node.names}
    return names


def closure(root: Path, stage: str) -> set[str]:
    """Paths (relative to root) of every project module `pipelines/<stage>.py` needs."""
    todo, seen = [root / "pipelines" / f"{stage}.py"], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imports(root, path):
            found = module_file(root, name)
            if found is not None:
                todo.append(found)
                parts = name.split(".")
                for k in range(1, len(parts)):  # importing a.b.c runs a/__init__ and a/b/__init__
                    parent = module_file(root, ".".join(parts[:k]))
                    if parent is not None:
                        todo.append(parent)
    return {p.relative_to(root).as_posix() for p in seen}
