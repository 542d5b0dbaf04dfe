"""The ``matryoshka_batchtopk`` objective: nested dictionaries, each reconstructing alone.

Source: Bussmann et al. 2025, "Learning Multi-Level Features with Matryoshka Sparse
Autoencoders" (and Nabeshima 2024, "Matryoshka Sparse Autoencoders"). The code is
BatchTopK's (:mod:`.batchtopk`: the batch's top ``k · batch`` positive
pre-activations, AuxK on the dead latents); with the prefixes ``m_1 < ... < m_n =
d_sae`` (``matryoshka_prefixes``) and ``x̂_m = Σ_{j < m} z_j W_dec[j] + b_dec`` the
reconstruction from the first ``m`` latents only, the loss is the **sum** over the
prefixes (as in the paper and SAELens' ``MatryoshkaBatchTopKTrainingSAE``)

    ``L = Σ_i mean_token ‖x − x̂_{m_i}‖² + α · Var(x) · L_aux``

(the ``i = n`` term is the full reconstruction of :mod:`.batchtopk`). Early latents
must reconstruct on their own, so they learn general features and later ones refine
them. Saved as a ``jumprelu`` SAE with BatchTopK's global threshold θ.
"""

from __future__ import annotations

from torch import Tensor

from saehooks import activation_fns
from saehooks.sae import SAE
from saehooks.training import losses, sparse
from saehooks.training.objectives.base import ForwardOutput, StepState
from saehooks.training.objectives.batchtopk import BatchTopKObjective

DEFAULT_FRACTIONS = (16, 8, 4, 2, 1)
"""Empty ``matryoshka_prefixes``: ``d_sae / f`` for these ``f`` (whole ones only)."""


def default_prefixes(d_sae: int) -> tuple[int, ...]:
    """``(d_sae/16, d_sae/8, d_sae/4, d_sae/2, d_sae)``, keeping the whole ones (``d_sae``
    is always kept): 4096 → (256, 512, 1024, 2048, 4096); 6 → (3, 6)."""
    out = sorted({d_sae // f for f in DEFAULT_FRACTIONS if d_sae % f == 0 and d_sae >= f})
    return tuple(out)


def prefix_reconstructions(
    acts: Tensor,
    rows: Tensor,
    cols: Tensor,
    n: int,
    W_dec: Tensor,
    b_dec: Tensor,
    prefixes: tuple[int, ...],
) -> list[Tensor]:
    """``x̂_m = Σ_{j < m} z_j W_dec[j] + b_dec`` for every ``m`` in ``prefixes``, from a
    sparse code (each entry decoded once: band ``[m_{i−1}, m_i)`` is added to the
    previous prefix's sum).

    Args:
        acts: ``[nnz]`` activations (differentiable) of the entries at ``rows``,
            ``cols`` ``[nnz]`` (sorted by row).
        n: tokens in the batch.
        W_dec: ``[d_sae, d_in]``; b_dec: ``[d_in]``.
        prefixes: strictly increasing prefix sizes.

    Returns:
        One ``[n, d_in]`` reconstruction per prefix.
    """
    d_sae = W_dec.shape[0]
    out, partial, lo = [], b_dec.expand(n, -1), 0
    for hi in prefixes:
        keep = ((cols >= lo) & (cols < hi)).nonzero().squeeze(1)
        code = sparse.code_from_rows(acts[keep], rows[keep], cols[keep], n)
        bags = sparse.latent_bags(code.cols, d_sae)
        partial = partial + sparse.sparse_decode(code, W_dec, bags)
        out.append(partial)
        lo = hi
    return out


class MatryoshkaBatchTopKObjective(BatchTopKObjective):
    """Matryoshka BatchTopK SAE training; saved as ``jumprelu`` (threshold θ)."""

    name = "matryoshka_batchtopk"
    fields = BatchTopKObjective.fields | {"matryoshka_prefixes"}

    def prefixes(self, d_sae: int) -> tuple[int, ...]:
        """``matryoshka_prefixes``, or :func:`default_prefixes` when empty."""
        return self.cfg.matryoshka_prefixes or default_prefixes(d_sae)

    def forward(self, sae: SAE, x: Tensor, state: StepState) -> ForwardOutput:
        """One batch: BatchTopK's step (full reconstruction and AuxK), plus the MSE of
        each inner prefix's reconstruction.

        Args:
            sae: training-space SAE.
            x: normalised activations ``[batch, d_in]``.
            state: the step; its ``dead [d_sae]`` mask selects AuxK's latents.
        """
        d_sae = sae.W_dec.shape[0]
        x_c = x - sae.b_dec
        pre = sparse.encoder_pre(x_c.detach(), sae.W_enc, sae.b_enc, self.matmul_dtype)
        vals, rows, cols = activation_fns.batch_topk_code(pre, self.cfg.k)
        code = sparse.code_from_rows(vals, rows, cols, pre.shape[0])
        out = self.code_step(sae, x, x_c, pre, code, state.dead)
        inner = self.prefixes(d_sae)[:-1]
        if not inner:
            return out
        # the entries of the inner prefixes, with their own encoder gradients
        keep = (cols < inner[-1]).nonzero().squeeze(1)
        sub = sparse.code_from_rows(vals[keep], rows[keep], cols[keep], pre.shape[0])
        bags = sparse.latent_bags(sub.cols, d_sae)
        acts = sparse.selected_pre(x_c, sae.W_enc, sae.b_enc, sub, bags).relu()
        recons = prefix_reconstructions(
            acts, sub.rows, sub.cols, pre.shape[0], sae.W_dec, sae.b_dec, inner
        )
        extra = sum(losses.mse(x, r) for r in recons)
        return out._replace(loss=out.loss + extra)
