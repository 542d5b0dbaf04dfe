"""Edge detectors from natural images: an SAE on image patches learns oriented filters.

    python demos/edge_detectors.py [--size 12] [--d-sae 144] [--k 4] [--tokens 2e6]
                                   [--no-whiten] [--out demos/edge_detectors.png]

The seed's classic result (Olshausen & Field 1996, "Emergence of simple-cell receptive
field properties by learning a sparse code for natural images"; the same picture as
Ng's sparse-autoencoder notes): a sparse code of small natural-image patches learns
localised, oriented, band-pass filters -- edge detectors much like V1 simple cells --
while PCA of the same patches gives global, Fourier-like gratings ordered by frequency.

Data: the two photographs scikit-learn ships (``sklearn.datasets.load_sample_images``,
no download; ``pip install saehooks[images,plots]``), in grayscale; random
``size x size`` patches, each with its own mean removed (the DC component carries
brightness, not structure). The patches are then ZCA-whitened (regularised:
``W = U (Λ + ε λ_max)^(-1/2) Uᵀ``, ε 0.1). Why whiten: natural images have a ~1/f²
power spectrum, so raw patches are dominated by their few lowest frequencies; an SAE on
them spends its latents on smooth blobs and ramps. Whitening flattens the spectrum (as
the retina does, and as the classic experiments did), so the sparse code has to find
structure in the phases -- edges. ε damps the highest, noisiest frequencies
(``--no-whiten`` shows the difference). ZCA (rather than PCA whitening) keeps
whitened patches in pixel coordinates, so decoder rows can be drawn as image patches.

The SAE: :func:`saehooks.train_sae` on the plain ``[n, size²]`` patch tensor (no
model), TopK with k 4 of 144 latents (a complete dictionary for 12x12 patches) for 2M
patch-tokens: about half a minute on one CPU thread. The figure shows every decoder
row (left) beside the top principal components of the patches (right, in order). The
script also prints, for both, the median spatial participation ratio
``(Σ w²)² / (n Σ w⁴)`` of their rows (the fraction of pixels a filter effectively
uses: lower is more localised), and the SAE's held-out FVU beside PCA's at the same
number of active components.
"""

from __future__ import annotations

import argparse
import functools
import math
import tempfile
from pathlib import Path

import torch
from torch import Tensor

import saehooks as sh
from saehooks import metrics
from saehooks.errors import InputError

OUT_PNG = Path(__file__).with_name("edge_detectors.png")
GRAY = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma weights


@functools.cache
def _sample_images() -> tuple:
    """scikit-learn's two sample photographs (``uint8 [427, 640, 3]`` arrays), decoded
    once per process."""
    from sklearn.datasets import load_sample_images

    return tuple(load_sample_images().images)


def load_patches(size: int = 12, n: int = 100_000, seed: int = 0) -> Tensor:
    """Random grayscale patches of scikit-learn's two sample photographs.

    Args:
        size: patch side in pixels.
        n: patches in all (half from each photograph).
        seed: seed of the patch positions.

    Returns:
        ``[n, size * size]`` float64, pixel values in [0, 1] with each patch's own
        mean removed (rows sum to 0), rows in row-major pixel order.

    Raises:
        ImportError: scikit-learn is missing (``pip install saehooks[images]``).
        InputError: ``size`` < 2 or ``n`` < 2.
    """
    if size < 2 or n < 2:
        raise InputError(f"pass size >= 2 and n >= 2, got size={size}, n={n}")
    images = _sample_images()
    gen = torch.Generator().manual_seed(seed)
    weights = torch.tensor(GRAY, dtype=torch.float64)
    offsets = torch.arange(size)
    out = []
    for i, image in enumerate(images):
        gray = (torch.tensor(image, dtype=torch.float64) @ weights) / 255.0
        count = n // len(images) + (i < n % len(images))
        ys = torch.randint(0, gray.shape[0] - size + 1, (count,), generator=gen)
        xs = torch.randint(0, gray.shape[1] - size + 1, (count,), generator=gen)
        rows = (ys[:, None] + offsets)[:, :, None]
        cols = (xs[:, None] + offsets)[:, None, :]
        out.append(gray[rows, cols].reshape(count, -1))
    patches = torch.cat(out)
    return patches - patches.mean(1, keepdim=True)


def principal_components(x: Tensor) -> tuple[Tensor, Tensor]:
    """Eigen-decomposition of the covariance of ``x [n, d]``: ``(eigenvalues [d],
    components [d, d])``, largest first, one component per row (float64)."""
    x = x.double()
    centred = x - x.mean(0)
    values, vectors = torch.linalg.eigh(centred.T @ centred / x.shape[0])
    return values.flip(0), vectors.flip(1).T.contiguous()


def zca_whitening(x: Tensor, epsilon: float = 0.1) -> Tensor:
    """The regularised ZCA whitening matrix of ``x [n, d]``: ``U (Λ + ε λ_max)^(-1/2) Uᵀ``
    (``[d, d]``, float64, symmetric; whiten with ``x @ W``). ``ε`` (a fraction of the
    largest eigenvalue) keeps the noisy high frequencies from being amplified."""
    values, components = principal_components(x)
    scale = (values.clamp_min(0) + epsilon * values[0]).rsqrt()
    return components.T @ torch.diag(scale) @ components


def participation_ratio(w: Tensor) -> Tensor:
    """``(Σ_i w_i²)² / (n Σ_i w_i⁴)`` per row of ``w [m, n]``: the fraction of the ``n``
    pixels a filter effectively spreads over (1 for a flat row, 1/n for one pixel)."""
    sq = w.double().pow(2)
    return sq.sum(1).pow(2) / (w.shape[1] * sq.pow(2).sum(1))


def train_patch_sae(
    patches: Tensor,
    d_sae: int = 144,
    k: int = 4,
    tokens: int = 2_000_000,
    out_dir: str | Path | None = None,
    seed: int = 0,
    lr: float = 1e-3,
) -> sh.SAE:
    """A TopK SAE trained on ``patches [n, d]`` (float) with :func:`saehooks.train_sae`
    and no model (epochs over the tensor). Saved under ``out_dir`` (a temporary folder
    if None, removed afterwards)."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = sh.TrainConfig(
            hook_name="image_patches",
            architecture="topk",
            d_sae=d_sae,
            k=k,
            total_tokens=tokens,
            batch_size=1024,
            lr=lr,
            dead_window_tokens=min(200_000, tokens),
            init_tokens=min(16384, patches.shape[0]),
            seed=seed,
            checkpoint_every_tokens=0,
            progress_bar=False,
            out_dir=str(out_dir or Path(tmp) / "run"),
        )
        return sh.train_sae(None, patches.float(), cfg)


def heldout_fvu(sae: sh.SAE, x: Tensor) -> tuple[float, float]:
    """``(FVU, L0)`` of ``sae`` on ``x [n, d]``."""
    with torch.no_grad():
        acts = sae.encode(x.float())
        return metrics.fvu(x.float(), sae.decode(acts)), float((acts > 0).sum(1).float().mean())


def tile(rows: Tensor, size: int, columns: int | None = None) -> Tensor:
    """Rows ``[m, size²]`` as one image of ``size x size`` tiles, each scaled to [-1, 1],
    separated by 1-pixel gaps of 0 (mid-grey)."""
    m = rows.shape[0]
    columns = columns or math.ceil(math.sqrt(m))
    lines = math.ceil(m / columns)
    out = torch.zeros(lines * (size + 1) - 1, columns * (size + 1) - 1)
    for i, row in enumerate(rows.double()):
        r, c = divmod(i, columns)
        tile_ = row.reshape(size, size) / row.abs().max().clamp_min(1e-12)
        out[r * (size + 1) : r * (size + 1) + size, c * (size + 1) : c * (size + 1) + size] = tile_
    return out


def plot(sae_rows: Tensor, pca_rows: Tensor, size: int, path: Path, titles: tuple[str, str]):
    """Save the two tile grids side by side to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 6.4))
    for ax, rows, title in zip(axes, (sae_rows, pca_rows), titles):
        ax.imshow(tile(rows, size).numpy(), cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=12, help="patch side (pixels)")
    ap.add_argument("--patches", type=int, default=100_000)
    ap.add_argument("--d-sae", type=int, default=144)
    ap.add_argument("--k", type=int, default=4, help="TopK latents per patch")
    ap.add_argument("--tokens", type=float, default=2e6, help="training patch-tokens")
    ap.add_argument("--epsilon", type=float, default=0.1, help="ZCA regulariser (x λ_max)")
    ap.add_argument("--no-whiten", action="store_true", help="train on raw patches")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(OUT_PNG))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    x = load_patches(args.size, args.patches + 10_000, args.seed)
    if not args.no_whiten:
        x = x @ zca_whitening(x, args.epsilon)
    train, held = x[: args.patches], x[args.patches :]
    _, pca = principal_components(train)
    sae = train_patch_sae(train, args.d_sae, args.k, int(args.tokens), seed=args.seed)
    fvu, l0 = heldout_fvu(sae, held)
    rows = sae.W_dec.detach().double()
    n_pca = min(args.d_sae, pca.shape[0] - 1)  # the last one is the removed mean (variance 0)
    sae_pr = float(participation_ratio(rows).median())
    pca_pr = float(participation_ratio(pca[:n_pca]).median())
    space = "unwhitened" if args.no_whiten else f"ZCA-whitened (ε {args.epsilon})"
    print(f"{args.patches:,} {space} {args.size}x{args.size} patches; TopK k {args.k}")
    pca_fvu = metrics.pca_fvu(held, round(l0))
    print(f"held-out FVU: SAE {fvu:.3f} at L0 {l0:.1f}; PCA rank {round(l0)} {pca_fvu:.3f}")
    print(f"median participation ratio: SAE rows {sae_pr:.3f}, top-{n_pca} PCA {pca_pr:.3f}")
    plot(
        rows,
        pca[:n_pca],
        args.size,
        Path(args.out),
        (
            f"SAE decoder rows (TopK k={args.k}, {args.d_sae} latents), {space} patches",
            f"top {n_pca} principal components of the same patches",
        ),
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
