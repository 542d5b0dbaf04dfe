"""Sparse forward/backward kernels for training SAEs on CPU.

A TopK SAE touches only ``k`` of its ``d_sae`` latents per token, yet the textbook
implementation pays for ``[batch, d_sae] @ [d_sae, d_in]`` matmuls in the decoder and
in both backward passes. Here latent codes are kept as a sparse COO list
(``rows``, ``cols``, ``vals``, sorted by row) and every product that involves them
is an ``embedding_bag`` (a gather-multiply-sum over "bags"):

* decode ``x̂[b] = Σ_{n: row=b} vals[n] · W_dec[cols[n]]`` (bags = tokens);
* ``∂L/∂W_dec[j] = Σ_{n: col=j} vals[n] · ∂L/∂x̂[rows[n]]`` (bags = latents);
* ``∂L/∂W_enc[:, j] = Σ_{n: col=j} ∂L/∂pre[n] · x_c[rows[n]]`` (bags = latents);
* ``∂L/∂vals[n] = W_dec[cols[n]] · ∂L/∂x̂[rows[n]]`` (a sampled dense-dense product,
  ``torch.sparse.sampled_addmm``: ``(∂L/∂x̂ @ W_decᵀ)`` evaluated only at the code's
  entries).

Each of these is ONE large operation per batch (a handful per step), not a loop over
chunks: gathering ``W_dec[cols]`` as ``[nnz, d_in]`` and multiplying it in one ``bmm``
would write ``4 · nnz · d_in`` bytes (128 MB for 4096 tokens x k 32 x d_in 256), which
measured 3-5x slower on CPU than these fused gather-and-reduce kernels, which stream
over the rows of the tables and keep them in cache.

Only the encoder's forward ``x_c @ W_enc`` stays dense (it is needed to choose the
latents); it may run in bfloat16. The same idea drives EleutherAI sparsify's fused
encoder and the OpenAI sparse-autoencoder kernels; this is a CPU-friendly version.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import Function

_CHUNK = 16384
"""Entries per chunk of the fallback dot products (:func:`_rowwise_dots`), used only
where ``sampled_addmm`` cannot run (bf16/fp16 tables): 16384 x d_in 256 fp32 is 16 MB
per gathered table, large enough that the loop has few iterations."""


class SparseCode(NamedTuple):
    """Latent values of a batch as a COO list sorted by token.

    Built by :func:`code_from_topk` or :func:`code_from_rows`; ``vals`` are the
    selected pre-activations (for :func:`selected_pre`) or the activations (for
    :func:`sparse_decode`): ``code._replace(vals=acts)`` turns one into the other.
    """

    vals: Tensor
    """``[nnz]`` values (pre-activations or activations; may carry gradients)."""
    rows: Tensor
    """``[nnz]`` long: token index of each entry, non-decreasing."""
    cols: Tensor
    """``[nnz]`` long: latent index of each entry."""
    offsets: Tensor
    """``[n_rows]`` long: first entry of each token (``embedding_bag`` offsets)."""
    n_rows: int
    """Batch size."""


class LatentBags(NamedTuple):
    """The entries of a :class:`SparseCode` grouped by latent (for weight gradients)."""

    order: Tensor
    """``[nnz]`` permutation that sorts entries by latent."""
    offsets: Tensor
    """``[d_sae]`` first sorted entry of each latent."""
    counts: Tensor
    """``[d_sae]`` entries per latent (firings in the batch)."""


def latent_bags(cols: Tensor, d_sae: int) -> LatentBags:
    """Group entries by latent: a stable argsort of ``cols`` and per-latent offsets."""
    order = torch.argsort(cols, stable=True)
    counts = torch.bincount(cols, minlength=d_sae)
    return LatentBags(order, torch.cumsum(counts, 0) - counts, counts)


def code_from_topk(vals: Tensor, idx: Tensor) -> SparseCode:
    """The :class:`SparseCode` of a dense ``[batch, k]`` top-k result (``k`` entries per
    token, in the order given)."""
    n, k = idx.shape
    rows = torch.arange(n, device=idx.device).repeat_interleave(k)
    offsets = torch.arange(0, n * k, k, device=idx.device)
    return SparseCode(vals.reshape(-1), rows, idx.reshape(-1), offsets, n)


def code_from_rows(vals: Tensor, rows: Tensor, cols: Tensor, n_rows: int) -> SparseCode:
    """The :class:`SparseCode` of entries ``[nnz]`` already sorted by row (tokens without
    an entry get an empty bag)."""
    return SparseCode(vals, rows, cols, row_offsets(rows, n_rows), n_rows)


def row_offsets(rows: Tensor, n_rows: int) -> Tensor:
    """``embedding_bag`` offsets ``[n_rows]`` for entries sorted by row."""
    counts = torch.bincount(rows, minlength=n_rows)
    return torch.cumsum(counts, 0) - counts


def _bag_sum(indices: Tensor, table: Tensor, offsets: Tensor, weights: Tensor) -> Tensor:
    return F.embedding_bag(indices, table, offsets, mode="sum", per_sample_weights=weights)


def _rowwise_dots(a_table: Tensor, a_idx: Tensor, b_table: Tensor, b_idx: Tensor) -> Tensor:
    """``out[n] = a_table[a_idx[n]] · b_table[b_idx[n]]`` by gathers and ``bmm`` in chunks
    of :data:`_CHUNK` entries (the fallback of :func:`sampled_dots`)."""
    out = torch.empty(a_idx.numel(), dtype=a_table.dtype, device=a_table.device)
    for s in range(0, a_idx.numel(), _CHUNK):
        a = a_table.index_select(0, a_idx[s : s + _CHUNK])
        b = b_table.index_select(0, b_idx[s : s + _CHUNK])
        out[s : s + _CHUNK] = torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)
    return out


_SAMPLED_DTYPES = (torch.float32, torch.float64)
"""Dtypes ``torch.sparse.sampled_addmm`` accepts (it refuses bf16 and fp16)."""


def sampled_dots(rows_table: Tensor, cols_table: Tensor, code: SparseCode) -> Tensor:
    """``out[n] = rows_table[code.rows[n]] · cols_table[code.cols[n]]`` for every entry.

    One ``torch.sparse.sampled_addmm`` (SDDMM: ``rows_table @ cols_tableᵀ`` evaluated
    only at the code's entries, a CSR pattern built from ``code.offsets``), so its cost
    grows with ``nnz · d``, never with ``n_rows · n_cols``; chunked gathers and ``bmm``
    (:func:`_rowwise_dots`) where it cannot run (bf16/fp16, other backends).

    Args:
        rows_table: ``[code.n_rows, d]`` (e.g. ``∂L/∂x̂``).
        cols_table: ``[n_cols, d]`` (e.g. ``W_dec``).
        code: entries sorted by row; only ``rows``, ``cols``, ``offsets`` are read.

    Returns:
        ``[nnz]`` in the tables' dtype.
    """
    nnz = code.cols.numel()
    if rows_table.dtype in _SAMPLED_DTYPES and rows_table.dtype == cols_table.dtype and nnz:
        crow = torch.cat([code.offsets, code.offsets.new_tensor([nnz])])
        zeros = torch.zeros(nnz, dtype=rows_table.dtype, device=rows_table.device)
        try:
            with warnings.catch_warnings():  # "sparse CSR support is in beta state"
                warnings.simplefilter("ignore", UserWarning)
                pattern = torch.sparse_csr_tensor(
                    crow,
                    code.cols,
                    zeros,
                    size=(code.n_rows, cols_table.shape[0]),
                    check_invariants=False,
                )
                return torch.sparse.sampled_addmm(
                    pattern, rows_table, cols_table.t(), beta=0.0
                ).values()
        except (RuntimeError, NotImplementedError):  # a backend without the kernel
            pass
    return _rowwise_dots(cols_table, code.cols, rows_table, code.rows)


class _SelectedPre(Function):
    """Selected pre-activations ``pre[rows, cols]`` with sparse gradients to the encoder."""

    @staticmethod
    def forward(
        ctx,
        x_c: Tensor,
        W_enc: Tensor,
        b_enc: Tensor,
        selected: Tensor,
        rows: Tensor,
        cols: Tensor,
        offsets: Tensor,
        bags: LatentBags,
    ) -> Tensor:
        ctx.save_for_backward(x_c, W_enc, rows, cols, offsets)
        ctx.bags = bags
        return selected.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        x_c, W_enc, rows, cols, offsets = ctx.saved_tensors
        bags: LatentBags = ctx.bags
        grad = grad.contiguous()
        g_x = g_w = g_b = None
        if ctx.needs_input_grad[0]:
            g_x = _bag_sum(cols, W_enc.t().contiguous(), offsets, grad)
        if ctx.needs_input_grad[1]:
            g_w = _bag_sum(rows[bags.order], x_c, bags.offsets, grad[bags.order]).t()
        if ctx.needs_input_grad[2]:
            g_b = torch.zeros(W_enc.shape[1], dtype=grad.dtype, device=grad.device)
            g_b.index_add_(0, cols, grad)
        return g_x, g_w, g_b, None, None, None, None, None


class _SparseDecode(Function):
    """``x̂[b] = Σ_{n: row=b} vals[n] · W_dec[cols[n]]`` (no bias)."""

    @staticmethod
    def forward(
        ctx,
        vals: Tensor,
        rows: Tensor,
        cols: Tensor,
        offsets: Tensor,
        W_dec: Tensor,
        bags: LatentBags,
    ) -> Tensor:
        ctx.save_for_backward(vals, rows, cols, offsets, W_dec)
        ctx.bags = bags
        return _bag_sum(cols, W_dec, offsets, vals)

    @staticmethod
    def backward(ctx, grad: Tensor):
        vals, rows, cols, offsets, W_dec = ctx.saved_tensors
        bags: LatentBags = ctx.bags
        grad = grad.contiguous()
        g_vals = g_w = None
        if ctx.needs_input_grad[0]:
            g_vals = sampled_dots(grad, W_dec, SparseCode(vals, rows, cols, offsets, len(grad)))
        if ctx.needs_input_grad[4]:
            g_w = _bag_sum(rows[bags.order], grad, bags.offsets, vals[bags.order])
        return g_vals, None, None, None, g_w, None


def selected_pre(
    x_c: Tensor, W_enc: Tensor, b_enc: Tensor, code: SparseCode, bags: LatentBags
) -> Tensor:
    """Attach sparse encoder gradients to already computed pre-activations.

    Args:
        x_c: encoder inputs ``[batch, d_in]`` (``x − b_dec``).
        W_enc: ``[d_in, d_sae]``; b_enc: ``[d_sae]``.
        code: the selected entries; ``code.vals [nnz]`` are ``pre[rows, cols]``
            computed without autograd.
        bags: :func:`latent_bags` of ``code.cols``.

    Returns:
        ``[nnz]`` equal to ``code.vals``, whose gradient flows to ``x_c``, ``W_enc``
        and ``b_enc`` as if it were ``(x_c @ W_enc + b_enc)[rows, cols]``.
    """
    return _SelectedPre.apply(
        x_c, W_enc, b_enc, code.vals, code.rows, code.cols, code.offsets, bags
    )


def sparse_decode(code: SparseCode, W_dec: Tensor, bags: LatentBags) -> Tensor:
    """Decode a sparse code without bias: ``code.vals [nnz] -> [batch, d_in]``.

    Equivalent to ``dense_acts @ W_dec`` where ``dense_acts[rows, cols] = vals``,
    with gradients to ``code.vals`` and ``W_dec`` computed sparsely.

    Args:
        code: the activations as a :class:`SparseCode`.
        W_dec: ``[d_sae, d_in]``.
        bags: :func:`latent_bags` of ``code.cols``.
    """
    return _SparseDecode.apply(code.vals, code.rows, code.cols, code.offsets, W_dec, bags)


def encoder_pre(
    x_c: Tensor,
    W_enc: Tensor,
    b_enc: Tensor,
    dtype: torch.dtype = torch.float32,
    out: Tensor | None = None,
) -> Tensor:
    """Dense pre-activations ``x_c @ W_enc + b_enc`` without autograd.

    Args:
        x_c: ``[batch, d_in]``.
        W_enc: ``[d_in, d_sae]``; b_enc: ``[d_sae]``.
        dtype: matmul dtype; ``torch.bfloat16`` is ~3-4x faster on CPUs with bf16
            units, at ~3 significant digits (the result is returned in fp32).
        out: optional ``[batch, d_sae]`` buffer in the parameters' dtype to write into
            and return (a training loop reuses one: a fresh 64 MB tensor per step costs
            the CPU ~16k page faults, ~10% of a d_sae 4096 step here).

    Returns:
        ``[batch, d_sae]`` in the parameters' dtype (``out`` when given).
    """
    with torch.no_grad():
        if dtype == torch.float32 or x_c.dtype == torch.float64:
            return torch.addmm(b_enc, x_c, W_enc, out=out)
        pre = x_c.to(dtype) @ W_enc.to(dtype)
        if out is None:
            return pre.to(W_enc.dtype).add_(b_enc)
        return out.copy_(pre).add_(b_enc)
