"""The analysis half of the package keeps its shape (issue #12): imports point one way,
no module reads another's private names, and each concept has one home.

Parsed with ``ast`` (function-level imports included), so a lazy import cannot hide an
edge. The layers, top to bottom::

    cli
    analysis.{attribution, steering, logits, html}
    interventions, evaluation            (interventions may use analysis.stats only)
    analysis.stats                       (the one statistics pass)
    hooks, data                          (data imports no hooks)
    tl (TransformerLens adapter), sae, metrics, checks, errors
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "saehooks"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The saehooks modules ``path`` imports (``from saehooks import x`` counts as
    ``saehooks.x`` when x is a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("saehooks")}
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.level == 0
            and node.module.startswith("saehooks")
        ):
            found.add(node.module)
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if (PACKAGE.parent / (sub.replace(".", "/") + ".py")).is_file() or (
                    PACKAGE.parent / sub.replace(".", "/")
                ).is_dir():
                    found.add(sub)
    return found


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}

FORBIDDEN = {
    "saehooks.metrics": ("saehooks.",),  # pure torch: the core imports without TL
    "saehooks.data": (
        "saehooks.hooks",
        "saehooks.analysis",
        "saehooks.evaluation",
        "saehooks.interventions",
        "saehooks.cli",
        "saehooks.training",
    ),
    "saehooks.hooks": (
        "saehooks.analysis",
        "saehooks.evaluation",
        "saehooks.interventions",
        "saehooks.cli",
        "saehooks.training",
    ),
    "saehooks.analysis.stats": (
        "saehooks.interventions",
        "saehooks.evaluation",
        "saehooks.cli",
        "saehooks.training",
        "saehooks.analysis.attribution",
        "saehooks.analysis.steering",
        "saehooks.analysis.logits",
        "saehooks.analysis.html",
    ),
    "saehooks.interventions": (
        "saehooks.evaluation",
        "saehooks.cli",
        "saehooks.training",
        "saehooks.analysis.attribution",
        "saehooks.analysis.steering",
        "saehooks.analysis.logits",
        "saehooks.analysis.html",
    ),
    "saehooks.evaluation": (
        "saehooks.analysis",
        "saehooks.interventions",
        "saehooks.cli",
        "saehooks.training",
    ),
    "saehooks.analysis": ("saehooks.analysis.",),  # the package file pulls in no module
}


@pytest.mark.parametrize("module", sorted(FORBIDDEN))
def test_imports_point_one_way(module):
    imported = _imports(MODULES[module])
    bad = sorted(
        m
        for m in imported
        for prefix in FORBIDDEN[module]
        if m == prefix.rstrip(".") or m.startswith(prefix)
    )
    assert not bad, f"{module} imports {bad}"


def test_no_analysis_module_imports_the_cli():
    for name, path in MODULES.items():
        if name.startswith("saehooks.analysis"):
            assert not any(m.startswith("saehooks.cli") for m in _imports(path)), name


def test_interventions_use_only_the_statistics_pass_of_the_analysis():
    analysis = {
        m for m in _imports(MODULES["saehooks.interventions"]) if m.startswith("saehooks.analysis")
    }
    assert analysis == {"saehooks.analysis.stats"}


MINE = [
    "saehooks.data",
    "saehooks.metrics",
    "saehooks.hooks",
    "saehooks.interventions",
    "saehooks.evaluation",
    *sorted(m for m in MODULES if m.startswith("saehooks.analysis")),
]


@pytest.mark.parametrize("module", MINE)
def test_no_private_reach_ins(module):
    """No ``from saehooks.x import _name`` and no ``x._name`` on an imported saehooks
    module (TransformerLens internals are the adapter's business)."""
    tree = ast.parse(MODULES[module].read_text())
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("saehooks"):
            private = [a.name for a in node.names if a.name.startswith("_")]
            assert not private, f"{module} imports private {private} from {node.module}"
            modules |= {
                a.asname or a.name for a in node.names if f"{node.module}.{a.name}" in MODULES
            }
        elif isinstance(node, ast.Import):
            modules |= {a.asname or a.name for a in node.names if a.name.startswith("saehooks")}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
            and node.attr.startswith("_")
        ):
            raise AssertionError(f"{module} reads {node.value.id}.{node.attr}")


def _definitions(name: str) -> list[str]:
    found = []
    for module, path in MODULES.items():
        for node in ast.parse(path.read_text()).body:
            if (
                isinstance(node, (ast.FunctionDef, ast.ClassDef))
                and node.name == name
                and not any(getattr(d, "id", None) == "overload" for d in node.decorator_list)
            ):  # typing stubs
                found.append(module)
    return found


@pytest.mark.parametrize(
    "name, home",
    [
        ("capture", "saehooks.data"),
        ("sae_acts", "saehooks.data"),
        ("replace_where", "saehooks.data"),
        ("position_selector", "saehooks.data"),
        ("select_positions", "saehooks.data"),
        ("position_mask", "saehooks.data"),
        ("bos_token_id", "saehooks.data"),
        ("iter_batches", "saehooks.data"),
        ("TokenSums", "saehooks.metrics"),
        ("ReconstructionSums", "saehooks.metrics"),
        ("FeatureCounts", "saehooks.metrics"),
        ("feature_stats", "saehooks.analysis.stats"),
        ("latent_hooks", "saehooks.hooks"),
        ("feature_logit_effects", "saehooks.analysis.logits"),
    ],
)
def test_one_home_per_concept(name, home):
    assert _definitions(name) == [home]


def test_removed_modules_are_gone_and_effects_names_no_module():
    for old in ("features", "effects", "feature_utils", "features_html"):
        assert f"saehooks.{old}" not in MODULES
    assert not any("effects" in m.rsplit(".", 1)[-1] for m in MODULES)
