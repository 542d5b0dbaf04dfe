"""The package's shape: imports point one way, and no module reads another module's
private names (ARCHITECTURE.md draws the layers this test enforces)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "saehooks"

LAYERS = [
    # (layer, module prefixes); a module may import its own layer and the ones below
    (0, ["errors", "checks", "distributed"]),
    (1, ["sae", "activation_fns", "metrics", "io", "reference"]),
    (3, ["tl"]),
    (4, ["data", "hooks"]),
    (5, ["training"]),
    (5, ["evaluation", "interventions", "analysis.stats"]),
    (6, ["analysis"]),
    (7, ["cli"]),
    (8, [""]),  # saehooks/__init__.py: the public API
]
ENTRY_POINT = 9
"""``__main__`` modules (``python -m saehooks``, ``torchrun -m saehooks.training``) sit
above everything: they are command lines."""
TL_ADAPTER = {"tl", "tl.hooked", "tl.resume"}
"""The only package (``saehooks/tl/``) that may touch TransformerLens (and torch hook)
internals."""
CORE = [
    "sae",
    "activation_fns",
    "metrics",
    "io",
    "training.objectives",
    "training.losses",
    "training.sparse",
    "errors",
    "checks",
    "distributed",
]
"""Modules that must import without TransformerLens."""


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(parts)


def layer_of(name: str) -> int:
    if name.split(".")[-1] == "__main__":
        return ENTRY_POINT  # `python -m saehooks.training` is a command line, like cli/
    best, rank = -1, None
    for layer, prefixes in LAYERS:
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".") or prefix == "") and len(
                prefix
            ) > best:
                best, rank = len(prefix), layer
    assert rank is not None, name
    return rank


def saehooks_imports(tree: ast.AST, name: str, is_package: bool) -> set[str]:
    """Every saehooks module ``name`` imports (top level and inside functions)."""
    out = set()
    base = name.split(".") if is_package else name.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {
                a.name[len("saehooks.") :] for a in node.names if a.name.startswith("saehooks.")
            }
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - node.level + 1]
                mod = ".".join(anchor + ([node.module] if node.module else []))
            elif node.module and (node.module == "saehooks" or node.module.startswith("saehooks.")):
                mod = node.module[len("saehooks.") :] if node.module != "saehooks" else ""
            else:
                continue
            for alias in node.names:  # "from saehooks import hooks" imports a module
                sub = f"{mod}.{alias.name}" if mod else alias.name
                out.add(
                    sub
                    if (PACKAGE / sub.replace(".", "/")).with_suffix(".py").exists()
                    or (PACKAGE / sub.replace(".", "/")).is_dir()
                    else mod
                )
    return {m for m in out if m != name}


MODULES = sorted(PACKAGE.rglob("*.py"))


def _edges():
    for path in MODULES:
        name = module_name(path)
        tree = ast.parse(path.read_text())
        for target in saehooks_imports(tree, name, path.name == "__init__.py"):
            yield name, target


def test_imports_point_down():
    upward = [
        f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
        for a, b in _edges()
        if layer_of(b) > layer_of(a)
    ]
    assert not upward, "imports that point up:\n" + "\n".join(sorted(upward))


def test_training_and_evaluation_do_not_import_each_other():
    crossing = [
        (a, b)
        for a, b in _edges()
        if (a.startswith("training") and b.split(".")[0] in ("evaluation", "interventions"))
        or (a.split(".")[0] in ("evaluation", "interventions") and b.startswith("training"))
    ]
    assert not crossing


NAMEDTUPLE_API = {"_replace", "_asdict", "_fields", "_make"}
"""NamedTuple's public methods, underscored by design."""


def _private_reads(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    hits = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            if (
                isinstance(owner, ast.Call)
                and isinstance(owner.func, ast.Name)
                and owner.func.id == "super"
            ):
                continue
            if node.attr in NAMEDTUPLE_API:
                continue
            hits.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} .{node.attr}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("saehooks"):
            hits += [
                f"{path.relative_to(PACKAGE.parent)}:{node.lineno} import {a.name}"
                for a in node.names
                if a.name.startswith("_")
            ]
    return hits


def test_no_module_reads_another_modules_private_names():
    hits = []
    for path in MODULES:
        if module_name(path) in TL_ADAPTER:
            continue
        hits += _private_reads(path)
    assert not hits, "private names read across modules:\n" + "\n".join(hits)


@pytest.mark.parametrize("name", CORE)
def test_the_core_does_not_import_transformer_lens(name):
    path = PACKAGE / name.replace(".", "/")
    files = sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]
    for file in files:
        tree = ast.parse(file.read_text())
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not any(n.startswith("transformer_lens") for n in names), file
        for target in saehooks_imports(tree, module_name(file), file.name == "__init__.py"):
            assert layer_of(target) <= 1 or target.startswith("training"), (
                f"{file} imports saehooks.{target}, above the core"
            )
