"""Scaled dot-product attention and multi-head attention, from scratch.

The question
------------
    "Implement the core attention mechanism from a Transformer model from scratch
    in PyTorch, including multi-head attention."

What the interviewer tests
--------------------------
* You know the formula ``softmax(Q Kᵀ / sqrt(d)) V`` and *why* the ``1/sqrt(d)``:
  with unit-variance entries the dot product of two d-dim vectors has variance d,
  which would push the softmax into its saturated, near-one-hot, zero-gradient region.
* Shape discipline: projecting to Q/K/V, splitting ``E`` into ``H`` heads of size
  ``D = E / H``, attending per head, merging heads back, and the output projection.
* Masks: a causal (look-ahead) mask for decoders, a key-padding mask for batches of
  unequal length, and what happens when a query may attend to nothing (a fully
  masked row: ``softmax`` over all ``-inf`` is ``0/0 = NaN``).
* Where dropout goes (on the attention weights, only in training) and the cost:
  the ``(B, H, T, S)`` score matrix is O(T·S) memory, the reason fused/flash
  kernels such as ``F.scaled_dot_product_attention`` exist.

Approach
--------
1. ``scaled_dot_product_attention`` is the math: scores, mask, softmax, dropout,
   weighted sum of values. Masks follow ``F.scaled_dot_product_attention``:
   a boolean ``attn_mask`` is True where attention is *allowed*; a float mask is
   added to the scores. Rows that end up fully masked get zero weights (so zero
   output), in the forward *and* the backward pass, never NaN.
2. ``MultiHeadAttention`` holds four ``nn.Linear`` layers (q, k, v, out) and does
   the split / merge of heads around (1). ``key_padding_mask`` follows
   ``nn.MultiheadAttention`` (True = padding, ignore this key).
3. ``MultiHeadAttention(..., fused=True)`` keeps the projections and the mask
   semantics but hands step (1) to ``F.scaled_dot_product_attention`` (a fused,
   flash-style kernel that never materialises the (B, H, T, S) matrix) whenever
   the mask is boolean or absent; an additive float mask falls back to (1). The
   explicit path stays the default: it is the answer to the question.

Verified in ``tests/unit/blocks/test_blocks_attention.py``: with weights copied
from ``nn.MultiheadAttention`` outputs and gradients match to 1e-5 (fp32) with
and without masks, and match ``F.scaled_dot_product_attention``; ``fused=True``
matches the explicit path to 1e-5 (outputs and gradients, every mask kind).

Used by: ``systems.recsys`` (attention over a user's recent items) and the
``systems.distributed_training`` language model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MultiHeadAttention", "causal_mask", "scaled_dot_product_attention"]


def causal_mask(t: int, s: int | None = None, *, device: torch.device | None = None) -> Tensor:
    """Boolean (T, S) mask, True where query i may attend key j (j <= i).

    Top-left aligned, like ``F.scaled_dot_product_attention(is_causal=True)``.
    """
    s = t if s is None else s
    return torch.ones(t, s, dtype=torch.bool, device=device).tril()


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> Tensor:
    """Attention ``softmax(q kᵀ * scale + mask) v`` computed explicitly.

    Args:
        q: queries (B, H, T, D).
        k: keys (B, H, S, D).
        v: values (B, H, S, Dv).
        attn_mask: bool (True = may attend) or additive float mask, broadcastable
            to (B, H, T, S).
        is_causal: also apply a causal mask (query i sees keys 0..i). Unlike the
            torch function this may be combined with ``attn_mask``.
        dropout_p: dropout on the attention weights. Always applied when > 0 (the
            caller decides about train/eval, as with the torch function).
        scale: defaults to ``1 / sqrt(D)``.

    Returns:
        (B, H, T, Dv). A query row whose keys are all masked returns zeros.
    """
    out, _ = _attend(q, k, v, attn_mask=attn_mask, is_causal=is_causal, dropout_p=dropout_p, scale=scale)
    return out


def _attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    attn_mask: Tensor | None,
    is_causal: bool,
    dropout_p: float,
    scale: float | None,
) -> tuple[Tensor, Tensor | None]:
    """``scaled_dot_product_attention`` that also returns the (B, H, T, 1) rows with no key (or None)."""
    d = q.size(-1)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    # (B, H, T, D) @ (B, H, D, S) -> (B, H, T, S): the O(T*S) matrix fused kernels avoid.
    scores = (q @ k.transpose(-2, -1)) * scale

    if is_causal:
        t, s = scores.shape[-2:]
        scores = scores.masked_fill(~causal_mask(t, s, device=scores.device), float("-inf"))
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attn_mask, float("-inf"))  # True = may attend
    elif attn_mask is not None:
        scores = scores + attn_mask  # additive float mask (-inf = blocked)

    # A row with every key masked is all -inf; softmax would give 0/0 = NaN and the NaN
    # would also flow back through the gradient. Give such rows finite scores before the
    # softmax (masked_fill has zero gradient at filled positions) and zero weights after.
    dead = torch.isneginf(scores).all(dim=-1, keepdim=True)  # (B, H, T, 1)
    has_dead = bool(dead.any())  # a CPU-GPU sync on GPU; fine for a reference implementation
    if has_dead:
        scores = scores.masked_fill(dead, 0.0)
    weights = torch.softmax(scores, dim=-1)  # (B, H, T, S), rows sum to 1
    if has_dead:
        weights = weights.masked_fill(dead, 0.0)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p, training=True)
    return weights @ v, (dead if has_dead else None)  # (B, H, T, S) @ (B, H, S, Dv) -> (B, H, T, Dv)


def _attend_fused(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    attn_mask: Tensor | None,
    is_causal: bool,
    dropout_p: float,
) -> tuple[Tensor, Tensor | None]:
    """``_attend`` through ``F.scaled_dot_product_attention``, for a boolean mask (True = may attend) or none.

    Same contract as the explicit path: a query row with no key gets zeros in the forward and finite
    (zero) gradients in the backward, whatever the kernel does with all-False rows (some backends give
    NaN). Returns the output (B, H, T, Dv) and the dead rows, broadcastable to (B, H, T, 1), or None.
    """
    if attn_mask is None:
        # Pure causal (or no mask): the kernel builds the mask itself, nothing of size T x S exists.
        # Top-left aligned causal rows always keep key 0, so no row can be dead.
        return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, dropout_p=dropout_p), None
    if attn_mask.dtype != torch.bool:
        raise ValueError("the fused path takes a boolean mask; an additive float mask uses the explicit path")
    while attn_mask.dim() < 4:
        attn_mask = attn_mask.unsqueeze(0)  # (T, S) -> (1, 1, T, S) etc.: dead rows keep 4 dims
    if is_causal:
        # torch's function refuses is_causal together with attn_mask: fold the causal mask in.
        attn_mask = attn_mask & causal_mask(q.size(-2), k.size(-2), device=q.device)
    dead = ~attn_mask.any(dim=-1, keepdim=True)  # (B|1, H|1, T|1, 1), bool: 1/4 of one fp32 score matrix at most
    has_dead = bool(dead.any())  # a host sync, as in the explicit path
    if has_dead:
        attn_mask = attn_mask | dead  # let dead rows attend everywhere (finite numbers) ...
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
    if has_dead:
        out = out.masked_fill(dead, 0.0)  # ... then zero them: zero output and zero gradient
    return out, (dead if has_dead else None)


class MultiHeadAttention(nn.Module):
    """Multi-head attention, batch first: ``(B, T, E) -> (B, T, E)``.

    Each head attends in its own D = E / H dimensional subspace, so the model can
    look at different positions for different reasons at the cost of one big
    attention (same FLOPs as single-head attention of width E).

    ``fused=True`` computes the attention itself with ``F.scaled_dot_product_attention`` (O(T) extra
    memory instead of O(T·S); same masks, same zero rows) unless an additive float mask is given.
    """

    def __init__(
        self, embed_dim: int, num_heads: int, *, dropout: float = 0.0, bias: bool = True, fused: bool = False
    ) -> None:
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.fused = fused  # F.scaled_dot_product_attention for boolean / no masks; explicit otherwise
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    def _split_heads(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        # (B, T, E) -> (B, T, H, D) -> (B, H, T, D): heads become a batch dimension.
        return x.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)

    def _merge_heads(self, x: Tensor) -> Tensor:
        b, _, t, _ = x.shape
        # (B, H, T, D) -> (B, T, H, D) -> (B, T, E); transpose makes it non-contiguous.
        return x.transpose(1, 2).contiguous().view(b, t, self.embed_dim)

    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        value: Tensor | None = None,
        *,
        key_padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
    ) -> Tensor:
        """Attend ``query`` (B, T, E) over ``key``/``value`` (B, S, E).

        Args:
            query: (B, T, E).
            key: (B, S, E); defaults to ``query`` (self-attention).
            value: (B, S, E); defaults to ``key``.
            key_padding_mask: (B, S) bool, True = padding (this key is ignored).
            attn_mask: bool (True = may attend) or additive float, broadcastable to
                (B, H, T, S); a (T, S) mask is shared by the batch and the heads.
            is_causal: apply a causal mask (query i sees keys 0..i).

        Returns:
            (B, T, E). A query with no key to attend to in any head (e.g. a sequence that
            is all padding) gets a zero vector, never NaN (nor the ``out_proj`` bias).
        """
        key = query if key is None else key
        value = key if value is None else value

        q = self._split_heads(self.q_proj(query))  # (B, H, T, D)
        k = self._split_heads(self.k_proj(key))  # (B, H, S, D)
        v = self._split_heads(self.v_proj(value))  # (B, H, S, D)

        mask = attn_mask
        if key_padding_mask is not None:
            keep = ~key_padding_mask.bool()[:, None, None, :]  # (B, 1, 1, S), True = real key
            if mask is None:
                mask = keep
            elif mask.dtype == torch.bool:
                mask = mask & keep
            else:  # additive float mask: where() broadcasts both ways, masked_fill would not
                mask = torch.where(keep, mask, torch.tensor(float("-inf"), dtype=mask.dtype, device=mask.device))

        dropout_p = self.dropout if self.training else 0.0
        if self.fused and (mask is None or mask.dtype == torch.bool):
            out, dead = _attend_fused(q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=dropout_p)
        else:
            out, dead = _attend(q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=dropout_p, scale=None)
        # out: (B, H, T, D)
        y = self.out_proj(self._merge_heads(out))  # (B, T, E)
        if dead is not None:
            # Nothing to attend to in every head: "no information" is a zero vector.
            y = y.masked_fill(dead.all(dim=1), 0.0)  # (B, H, T, 1) -> (B, T, 1)
        return y

    @torch.no_grad()
    def load_from_torch(self, mha: nn.MultiheadAttention) -> MultiHeadAttention:
        """Copy the weights of a ``nn.MultiheadAttention`` (same E, H) into this module.

        torch packs Q/K/V into one ``in_proj_weight`` of shape (3E, E), in that order.
        """
        if mha.embed_dim != self.embed_dim or mha.num_heads != self.num_heads:
            raise ValueError("embed_dim / num_heads differ")
        if mha.in_proj_weight is None:
            raise ValueError("only the packed in_proj_weight layout (kdim == vdim == E) is supported")
        wq, wk, wv = mha.in_proj_weight.chunk(3, dim=0)
        for lin, w in ((self.q_proj, wq), (self.k_proj, wk), (self.v_proj, wv)):
            lin.weight.copy_(w)
        self.out_proj.weight.copy_(mha.out_proj.weight)
        if mha.in_proj_bias is not None:
            bq, bk, bv = mha.in_proj_bias.chunk(3, dim=0)
            for lin, b in ((self.q_proj, bq), (self.k_proj, bk), (self.v_proj, bv)):
                if lin.bias is not None:
                    lin.bias.copy_(b)
        if self.out_proj.bias is not None and mha.out_proj.bias is not None:
            self.out_proj.bias.copy_(mha.out_proj.bias)
        return self
