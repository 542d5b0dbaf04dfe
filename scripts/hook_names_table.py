"""Print a Markdown table of the hook names each architecture offers through saehooks.

Builds the tiny random-weight fixtures of ``tests/arch_fixtures.py`` (offline, in a
temporary folder), loads each with ``saehooks.load_model`` (TransformerLens 4
``TransformerBridge``), runs one forward pass with every hook cached and lists, per
classic hook name (the form SAELens files use), the activation's shape after
``[batch, pos]`` on each architecture, and the TransformerLens 4 canonical name it is
an alias of. The fixtures have ``d_model`` 64, 4 query heads of width 16 (2 key/value
heads on grouped-query models) and MLP width 256 (GPT-2, Pythia) or 128 (the rest).

    python scripts/hook_names_table.py [--out hooks.md]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from arch_fixtures import ARCHITECTURES, build_model_dir  # noqa: E402

import saehooks as sh  # noqa: E402
from saehooks import tl  # noqa: E402

N_POS = 3
"""Tokens in the measuring pass; a dimension of this size is shown as ``pos``."""


def layer_pattern(name: str) -> str:
    """``blocks.0.attn.hook_z`` -> ``blocks.L.attn.hook_z``."""
    return re.sub(r"^blocks\.\d+\.", "blocks.L.", name)


def measure(model) -> dict[str, str]:
    """Per hook name: the shape after ``[batch, pos]``, ``"4×16"``, with ``pos`` for
    dimensions that follow the sequence length."""
    tokens = torch.full((1, N_POS), 2, dtype=torch.long)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    shapes = {}
    for name in tl.hook_dict(model):
        if name in cache.cache_dict:
            dims = cache[name].shape[2:]
            shapes[name] = "×".join("pos" if d == N_POS else str(d) for d in dims) or "scalar"
    return shapes


def describe(arch: str, root: Path) -> dict:
    """Classic names (block 0 and global), their shapes and canonical names, for one
    architecture; also whether the bridge without compatibility mode offers the same."""
    folder = build_model_dir(root, arch)
    model = sh.load_model(folder)
    plain = sh.load_model(folder, compatibility_mode=False)
    shapes = measure(model)
    rows = {}
    for name in tl.hook_dict(model):
        if (
            not tl.CLASSIC_HOOK.match(name)
            or name.startswith("blocks.")
            and not name.startswith("blocks.0.")
        ):
            continue
        rows[layer_pattern(name)] = {
            "shape": shapes.get(name, "off"),
            "canonical": layer_pattern(tl.canonical_hook_name(plain, name)),
        }
    same = set(tl.hook_dict(model)) == set(tl.hook_dict(plain))
    return {
        "rows": rows,
        "n_names": len(tl.hook_dict(model)),
        "same_without_compat": same,
        "hf": ARCHITECTURES[arch].hf_architecture,
    }


def table(info: dict[str, dict]) -> str:
    archs = list(info)
    order = sorted(
        {r for a in archs for r in info[a]["rows"]},
        key=lambda n: (n.startswith("blocks.L."), n.count("."), n),
    )
    order.sort(key=lambda n: (0 if not n.startswith("blocks") else 1, _stage(n)))
    lines = [
        "| classic hook name | TL4 canonical name | " + " | ".join(archs) + " |",
        "|---|---|" + "---|" * len(archs),
    ]
    for name in order:
        canon = {info[a]["rows"][name]["canonical"] for a in archs if name in info[a]["rows"]}
        if len(canon) == 1:
            canonical = f"`{canon.pop()}`"
        else:
            by = {}
            for a in archs:
                if name in info[a]["rows"]:
                    by.setdefault(info[a]["rows"][name]["canonical"], []).append(a)
            canonical = "; ".join(f"`{c}` ({', '.join(a)})" for c, a in by.items())
        if canonical == f"`{name}`":
            canonical = "(same)"
        cells = [info[a]["rows"][name]["shape"] if name in info[a]["rows"] else "—" for a in archs]
        lines.append(f"| `{name}` | {canonical} | " + " | ".join(cells) + " |")
    lines.append(
        "| all hook names (classic + canonical) | | "
        + " | ".join(str(info[a]["n_names"]) for a in archs)
        + " |"
    )
    return "\n".join(lines)


_STAGES = [
    "hook_embed",
    "hook_pos_embed",
    "hook_resid_pre",
    "ln1",
    "hook_attn_in",
    "hook_q_input",
    "hook_k_input",
    "hook_v_input",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "attn.hook_rot",
    "attn.hook_attn_scores",
    "attn.hook_pattern",
    "attn.hook_z",
    "attn.hook_result",
    "hook_attn_out",
    "hook_resid_mid",
    "ln2",
    "hook_mlp_in",
    "mlp.hook_pre",
    "mlp.hook_post",
    "hook_mlp_out",
    "hook_resid_post",
    "ln_final",
]


def _stage(name: str) -> int:
    """Position of a hook in the forward pass, for ordering the table."""
    rest = name.removeprefix("blocks.L.")
    return next((i for i, s in enumerate(_STAGES) if rest.startswith(s)), len(_STAGES))


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the Markdown to this file")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory() as tmp:
        info = {arch: describe(arch, Path(tmp)) for arch in ARCHITECTURES}
    legend = ", ".join(f"{a} = `{i['hf']}`" for a, i in info.items())
    same = all(i["same_without_compat"] for i in info.values())
    text = "\n".join(
        [
            "Hook names per architecture (generated by `scripts/hook_names_table.py` from the "
            "tiny fixtures of `tests/arch_fixtures.py`: d_model 64, 4 query heads × d_head 16, "
            "2 key/value heads on grouped-query models, MLP width 256 or 128). Cells give the "
            "activation's shape after `[batch, pos]`; `—`: TransformerLens has no such hook "
            "there (attaching an SAE there raises `HookNameError` naming the architecture); "
            "`off`: the name exists but carries no activation in a plain forward pass "
            "(TransformerLens fills `hook_attn_in`, `hook_q/k/v_input`, `attn.hook_result` and "
            "`hook_mlp_in` only with `use_attn_in`, `use_split_qkv_input`, `use_attn_result`, "
            "`use_hook_mlp_in`; rotary models have no positional embedding for `hook_pos_embed`, "
            "and TransformerLens' GPT-NeoX attention bridge does not run `hook_rot_q/k`). "
            "Rows `blocks.L.*` exist for every layer L. SAEs attach by either name; SAELens "
            "files use the classic one.",
            "",
            table(info),
            "",
            f"Architectures: {legend}.",
            "",
            (
                "A bridge booted without `enable_compatibility_mode()` "
                "(`sh.load_model(..., compatibility_mode=False)`) offers exactly the same names."
                if same
                else "A bridge without compatibility mode offers a different set of names "
                "on: " + ", ".join(a for a, i in info.items() if not i["same_without_compat"]) + "."
            ),
        ]
    )
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return text


if __name__ == "__main__":
    main()
