"""Model definitions only (no loops): SASRec, the sequential next-item model, and its numpy inference.

Shapes: B batch, L history length (``max_len``), d embedding width, H heads. Item ids are shifted by one in the
model's tables: row 0 of the item embedding is padding, row i + 1 is item index i.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from systems.blocks.attention import MultiHeadAttention


@dataclass(kw_only=True)
class SASRecConfig:
    n_items: int
    max_len: int = 50
    dim: int = 64
    blocks: int = 2
    heads: int = 2
    dropout: float = 0.2


class SASRecBlock(nn.Module):
    """Pre-norm Transformer block: causal self-attention (``blocks.attention``) + position-wise FFN."""

    def __init__(self, cfg: SASRecConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim)
        self.attn = MultiHeadAttention(cfg.dim, cfg.heads, dropout=cfg.dropout, fused=True)
        self.norm2 = nn.LayerNorm(cfg.dim)
        self.ffn = nn.Sequential(
            nn.Linear(cfg.dim, cfg.dim), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.dim, cfg.dim)
        )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, pad: Tensor) -> Tensor:
        # x (B, L, d); pad (B, L) True = padding. Causal: position t sees items 0..t only (no peeking at the
        # next item it must predict). Left-padded rows attend to nothing before the first real item.
        h = self.norm1(x)
        x = x + self.drop(self.attn(h, key_padding_mask=pad, is_causal=True))
        x = x + self.drop(self.ffn(self.norm2(x)))
        return x.masked_fill(pad[..., None], 0.0)


class SASRec(nn.Module):
    """Self-attentive sequential recommendation (Kang & McAuley 2018), trained with a full softmax.

    Input (B, L) item ids + 1, left-padded with 0; output (B, L, n_items) next-item logits at every position
    (training) or (B, n_items) at the last position (:meth:`next_item_scores`). The output layer is the item
    embedding table itself (weight tying), so the scores are dot products with item vectors.
    """

    def __init__(self, cfg: SASRecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.item = nn.Embedding(cfg.n_items + 1, cfg.dim, padding_idx=0)
        self.pos = nn.Embedding(cfg.max_len, cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([SASRecBlock(cfg) for _ in range(cfg.blocks)])
        self.norm = nn.LayerNorm(cfg.dim)
        nn.init.normal_(self.item.weight, std=cfg.dim**-0.5)

    def hidden(self, seq: Tensor) -> Tensor:
        pad = seq == 0  # (B, L)
        pos = torch.arange(seq.shape[1], device=seq.device)
        x = self.item(seq) * self.cfg.dim**0.5 + self.pos(pos)[None]  # (B, L, d)
        x = self.drop(x).masked_fill(pad[..., None], 0.0)
        for block in self.blocks:
            x = block(x, pad)
        return self.norm(x)  # (B, L, d)

    def forward(self, seq: Tensor) -> Tensor:
        return self.hidden(seq) @ self.item.weight[1:].T  # (B, L, n_items)

    def next_item_scores(self, seq: Tensor) -> Tensor:
        return self.hidden(seq)[:, -1] @ self.item.weight[1:].T  # (B, n_items)


@dataclass
class SASRecInference:
    """:class:`SASRec`'s forward pass for one history in numpy, for serving (equal to the torch model, tested).

    Only the history's real positions are computed: with left padding, real positions never attend to padding
    (key mask) and padding outputs are zeroed, so dropping them changes nothing — and a 5-item history costs
    5 positions, not 50. Each weight is a float32 array taken from the eval-mode model (dropout off).
    """

    item: np.ndarray  # (n_items + 1, d), row 0 = padding
    pos: np.ndarray  # (L, d)
    blocks: list[dict[str, np.ndarray]]
    norm: tuple[np.ndarray, np.ndarray]
    heads: int
    scale: float  # sqrt(d), the input embedding scale
    source: SASRec | None = field(default=None, repr=False, compare=False)
    """The model whose parameters the arrays are views of (training updates them in place)."""

    @classmethod
    def from_model(cls, model: SASRec) -> SASRecInference:
        def arr(t: Tensor) -> np.ndarray:
            return np.asarray(t.detach().numpy(), dtype=np.float32)  # a view: no copy of the weights

        blocks = []
        for b in model.blocks:
            assert isinstance(b, SASRecBlock)
            layers: dict[str, nn.Module] = {
                "n1": b.norm1, "q": b.attn.q_proj, "k": b.attn.k_proj, "v": b.attn.v_proj, "o": b.attn.out_proj,
                "n2": b.norm2, "f1": b.ffn[0], "f2": b.ffn[3],
            }  # fmt: skip
            blocks.append(
                {f"{name}{p[0]}": arr(getattr(layer, p)) for name, layer in layers.items() for p in ("weight", "bias")}
            )
        return cls(
            item=arr(model.item.weight),
            pos=arr(model.pos.weight),
            blocks=blocks,
            norm=(arr(model.norm.weight), arr(model.norm.bias)),
            heads=model.cfg.heads,
            scale=float(model.cfg.dim**0.5),
            source=model,
        )

    def next_item_scores(self, hist: np.ndarray) -> np.ndarray:
        """(n_items,) float64 logits of the item after ``hist`` (item indices, oldest first).

        The last block computes only the last position's query: it is the only output used, and the keys and
        values of every position come from the block before it.
        """
        from scipy.special import erf

        L, d = self.pos.shape
        seq = np.asarray(hist, dtype=np.int64)[-L:] + 1  # 0 is padding
        n = len(seq)
        if n == 0:  # all padding: the last position's hidden state is the final norm of zeros
            h_last = _layer_norm(np.zeros((1, d), np.float32), *self.norm)[-1]
            return (self.item[1:] @ h_last).astype(np.float64)
        x = self.item[seq] * self.scale + self.pos[L - n :]  # (n, d): the left-padded positions L-n … L-1
        heads, hd = self.heads, d // self.heads
        for b, w in enumerate(self.blocks):  # keys: layer + w(eight) / b(ias)
            h = _layer_norm(x, w["n1w"], w["n1b"])
            k = (h @ w["kw"].T + w["kb"]).reshape(n, heads, hd).transpose(1, 0, 2)  # (H, n, hd)
            v = (h @ w["vw"].T + w["vb"]).reshape(n, heads, hd).transpose(1, 0, 2)
            if b == len(self.blocks) - 1:
                x, h = x[-1:], h[-1:]  # only the last position from here on
            r = len(x)
            q = (h @ w["qw"].T + w["qb"]).reshape(r, heads, hd).transpose(1, 0, 2)  # (H, r, hd)
            s = q @ k.transpose(0, 2, 1) * (1.0 / np.sqrt(hd))  # (H, r, n)
            if r > 1:
                s[:, _later(n)] = -np.inf  # causal: position t sees items 0..t
            s = np.exp(s - s.max(axis=-1, keepdims=True))
            a = (s / s.sum(axis=-1, keepdims=True)) @ v  # (H, r, hd)
            x = x + a.transpose(1, 0, 2).reshape(r, d) @ w["ow"].T + w["ob"]
            f = _layer_norm(x, w["n2w"], w["n2b"]) @ w["f1w"].T + w["f1b"]
            f = 0.5 * f * (1.0 + erf(f * np.float32(1.0 / np.sqrt(2.0))))  # exact GELU, as nn.GELU()
            x = x + f @ w["f2w"].T + w["f2b"]
        h_last = _layer_norm(x[-1:], *self.norm)[0]
        return (self.item[1:] @ h_last).astype(np.float64)


@functools.cache
def _later(n: int) -> np.ndarray:
    """(n, n) bool, True above the diagonal: the keys a causal query may not see (cached per length)."""
    return np.triu(np.ones((n, n), dtype=bool), k=1)


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    xc = x - x.mean(axis=-1, keepdims=True)
    return xc / np.sqrt((xc * xc).mean(axis=-1, keepdims=True) + eps) * w + b
