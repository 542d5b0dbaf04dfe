"""Rebuild ``saehooks/io/data/saelens_registry.json`` from an installed sae-lens.

SAELens (jbloomAus/SAELens, MIT licence) publishes the names of pretrained SAE
releases in ``sae_lens/pretrained_saes.yaml``. saehooks ships the part of it that its
loader reads (``saehooks/io/registry.py``), with the source version and the licence
notice beside it. Run this with a Python that has sae-lens and PyYAML installed (the
TransformerLens 3 environment), e.g.::

    .venv-tl3/bin/python scripts/refresh_saelens_registry.py

or point it at a file: ``--yaml path/to/pretrained_saes.yaml --version 6.54.12``.
sae_lens itself is not imported (that would import TransformerLens); only its files
are read.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
from collections import Counter
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "saehooks" / "io" / "data"
JSON_FILE = "saelens_registry.json"
LICENSE_FILE = "saelens_registry.LICENSE"
FORMAT = 1
"""Version of the JSON layout written here; registry.py refuses other versions."""


def _installed_sae_lens() -> tuple[Path, Path | None, str]:
    spec = importlib.util.find_spec("sae_lens")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "sae-lens is not installed in this Python; run this script with the "
            "TL3 venv, or pass --yaml and --version"
        )
    package = Path(next(iter(spec.submodule_search_locations)))
    dist = importlib.metadata.distribution("sae-lens")
    license_path = None
    for file in dist.files or []:
        if file.name.upper().startswith("LICENSE"):
            license_path = Path(str(dist.locate_file(file)))
            break
    return package / "pretrained_saes.yaml", license_path, dist.version


def _path_prefix(saes: list[dict]) -> str:
    """The most common ``prefix`` with ``path == prefix + id``; ``""`` if none helps."""
    counts = Counter(
        str(s["path"])[: -len(str(s["id"]))] for s in saes if str(s["path"]).endswith(str(s["id"]))
    )
    if not counts:
        return ""
    prefix, n = counts.most_common(1)[0]
    return prefix if prefix and n > 1 else ""


def compact(data: dict) -> dict:
    """The fields saehooks reads, one compact row per SAE.

    Per release: ``repo_id``, ``model``, ``conversion`` (SAELens' ``conversion_func``;
    ``"sae_lens"`` when absent), ``overrides`` (``config_overrides``, only when set),
    ``path_prefix`` and ``saes``: rows ``[id, path, neuronpedia_id, norm_scaling_factor]``
    with trailing nulls dropped; ``path`` null means ``path_prefix + id``.
    """
    releases = {}
    for name, value in data.items():
        saes = value["saes"]
        prefix = _path_prefix(saes)
        rows = []
        for sae in saes:
            sae_id, path = str(sae["id"]), str(sae["path"])
            row = [
                sae_id,
                None if path == prefix + sae_id else path,
                sae.get("neuronpedia"),
                sae.get("norm_scaling_factor"),
            ]
            while row[-1] is None:
                row.pop()
            rows.append(row)
        release = {
            "repo_id": value["repo_id"],
            "model": value["model"],
            "conversion": value.get("conversion_func") or "sae_lens",
        }
        if value.get("config_overrides"):
            release["overrides"] = value["config_overrides"]
        if prefix:
            release["path_prefix"] = prefix
        release["saes"] = rows
        releases[name] = release
    return releases


def _dumps(header: dict, releases: dict) -> str:
    """Compact JSON with one release per line (small, and diffs show what changed)."""

    def one(value) -> str:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)

    lines = [one(header)[:-1] + ',"releases":{']
    items = list(releases.items())
    for i, (name, release) in enumerate(items):
        lines.append(f"{one(name)}:{one(release)}" + ("," if i < len(items) - 1 else ""))
    lines.append("}}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--yaml", type=Path, help="pretrained_saes.yaml to read (default: the installed sae-lens')"
    )
    parser.add_argument("--version", help="sae-lens version of that file (with --yaml)")
    parser.add_argument("--license", type=Path, help="SAELens' LICENSE file (with --yaml)")
    parser.add_argument("--out", type=Path, default=OUT, help="folder to write into")
    args = parser.parse_args(argv)
    import yaml

    if args.yaml is not None:
        if not args.version:
            parser.error("--yaml needs --version (the sae-lens version the file comes from)")
        yaml_path, license_path, version = args.yaml, args.license, args.version
    else:
        yaml_path, license_path, version = _installed_sae_lens()
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(yaml_path) as f:
        data = yaml.load(f, Loader=loader)
    releases = compact(data)
    out = {
        "format": FORMAT,
        "source": f"sae-lens {version}, sae_lens/pretrained_saes.yaml "
        "(https://github.com/jbloomAus/SAELens)",
        "sae_lens_version": version,
        "license": f"MIT License, Copyright (c) 2023 Joseph Bloom; full text in {LICENSE_FILE}",
        "layout": " ".join(compact.__doc__.split("\n\n", 1)[1].split()),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / JSON_FILE).write_text(_dumps(out, releases))
    if license_path is not None and license_path.is_file():
        notice = (
            f"The file {JSON_FILE} is derived from sae_lens/pretrained_saes.yaml of\n"
            f"sae-lens {version} (https://github.com/jbloomAus/SAELens), under this "
            "licence:\n\n"
        )
        (args.out / LICENSE_FILE).write_text(notice + license_path.read_text())
    n_saes = sum(len(r["saes"]) for r in releases.values())
    size = (args.out / JSON_FILE).stat().st_size
    print(
        f"wrote {args.out / JSON_FILE}: {len(releases)} releases, {n_saes} SAEs, "
        f"{size / 1e6:.2f} MB (sae-lens {version})"
    )


if __name__ == "__main__":
    main()
