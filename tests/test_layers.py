"""The package's folders are its layers, and imports only run downward (or within a layer)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "oasis_gen"

# lowest first; a module may import its own layer and those below it, never one above
LAYERS: list[tuple[str, ...]] = [
    ("utils",),
    ("data",),
    ("networks",),
    ("inferers",),
    ("metrics",),
    ("tracking",),
    ("engines",),
    ("generation", "inference"),
    ("bundle",),
    ("commands", "__main__"),
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def layer_of(module: str) -> str | None:
    """The layer of a dotted ``oasis_gen`` module (``None`` for the package root and for other packages)."""
    parts = module.split(".")
    if parts[0] != "oasis_gen" or len(parts) < 2:
        return None
    return parts[1]


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every ``oasis_gen`` module a file imports, at any depth of the file (function-level imports too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            # ``from oasis_gen import tracking`` imports the tracking layer itself
            if node.module == "oasis_gen":
                found += [(node.lineno, f"oasis_gen.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name.startswith("oasis_gen")]


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)


def test_every_folder_is_a_layer_and_nothing_but_the_face_lies_at_the_top() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith("__")}
    layers = set(RANK) - {"__main__"}
    assert folders == layers, f"folders not in LAYERS (or layers with no folder): {folders ^ layers}"
    top = {p.name for p in PACKAGE.glob("*.py")}
    assert top == {"__init__.py", "__main__.py"}, f"modules at the top of oasis_gen/: {sorted(top)}"


def test_imports_only_run_downward() -> None:
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = layer_of(module_name(path))
        if own is None:
            continue
        for line, name in imported_modules(path):
            other = layer_of(name)
            if other is not None and other in RANK and RANK[other] > RANK[own]:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({own}) imports {name} ({other})")
    assert not upward, "imports that run upward:\n" + "\n".join(upward)


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    # the walker must find imports inside functions, where the cheap late imports of this project live
    source = tmp_path / "late.py"
    source.write_text("def f():\n    from oasis_gen.commands.cli import main\n    import oasis_gen.bundle.configs\n")
    names = [name for _, name in imported_modules(source)]
    assert names == ["oasis_gen.commands.cli", "oasis_gen.bundle.configs"]
    assert RANK[layer_of(names[0])] > RANK["utils"]



def test_no_module_over_400_lines() -> None:
    long = {str(p.relative_to(PACKAGE.parent)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"modules over 400 lines (split them by job): {long}"
