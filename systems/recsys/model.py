"""Model definitions only (no loops): the two-tower retriever and the attention ranker.

Shapes: B batch, L history length, d embedding width, G genres, C content-embedding width.
Index conventions: item embedding tables have ``n_items + 2`` rows; row ``n_items`` is the *unknown/new*
item (its id embedding is learned from item-id dropout, so a brand-new item still gets a sensible vector
from its genres and text) and row ``n_items + 1`` is history padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from systems.blocks.attention import MultiHeadAttention

N_AGE_BUCKETS = 8  # age // 10, clipped; + 1 unknown


@dataclass(kw_only=True)
class TowerConfig:
    n_items: int
    n_genres: int
    content_dim: int
    n_occupations: int
    dim: int = 64
    hidden: int = 128
    temperature: float = 0.05
    item_id_dropout: float = 0.1
    """Fraction of training items whose id embedding is replaced by the unknown row (cold-start robustness)."""


def user_cat_embeddings(n_occupations: int, dim: int) -> nn.ModuleList:
    """Embeddings for the user categoricals [age_bucket, gender, occupation]; the last row of each is unknown."""
    return nn.ModuleList(
        [nn.Embedding(N_AGE_BUCKETS + 1, dim), nn.Embedding(3, dim), nn.Embedding(n_occupations + 1, dim)]
    )


class TwoTower(nn.Module):
    """User tower over (recent history, demographics); item tower over (id, genres, text embedding).

    The user tower has no user-id embedding: a user is what they did, so a click seconds ago moves the user
    vector at the next request without retraining (the real-time path), and unseen users still embed.
    """

    def __init__(self, cfg: TowerConfig, genres: Tensor, content: Tensor) -> None:
        super().__init__()
        self.cfg = cfg
        n = cfg.n_items
        self.register_buffer("genres", genres.float())  # (n_items, G)
        self.register_buffer("content", content.float())  # (n_items, C)
        self.item_id = nn.Embedding(n + 2, cfg.dim, padding_idx=n + 1)
        self.item_mlp = nn.Sequential(
            nn.Linear(cfg.dim + cfg.n_genres + cfg.content_dim, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, cfg.dim)
        )
        self.hist_id = nn.Embedding(n + 2, cfg.dim, padding_idx=n + 1)
        self.user_cats = user_cat_embeddings(cfg.n_occupations, 16)
        self.user_mlp = nn.Sequential(
            nn.Linear(2 * cfg.dim + 3 * 16, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, cfg.dim)
        )

    def item_features(self, item_idx: Tensor, genres: Tensor, content: Tensor) -> Tensor:
        """Item vectors (B, d), L2-normalised, from explicit features (works for items outside the buffers)."""
        x = torch.cat([self.item_id(item_idx), genres, content], dim=-1)
        return F.normalize(self.item_mlp(x), dim=-1)

    def item_embed(self, item_idx: Tensor, *, drop_ids: bool = False) -> Tensor:
        """Item vectors (B, d) for catalogue items."""
        ids = item_idx
        if drop_ids and self.cfg.item_id_dropout > 0:
            drop = torch.rand(ids.shape, device=ids.device) < self.cfg.item_id_dropout
            ids = torch.where(drop, torch.full_like(ids, self.cfg.n_items), ids)
        genres: Tensor = self.genres  # type: ignore[assignment]
        content: Tensor = self.content  # type: ignore[assignment]
        return self.item_features(ids, genres[item_idx], content[item_idx])

    def user_embed(self, hist: Tensor, user_cats: Tensor) -> Tensor:
        """hist (B, L) item idx (pad = n_items + 1), user_cats (B, 3) -> (B, d) L2-normalised."""
        pad = self.cfg.n_items + 1
        mask = (hist != pad).float().unsqueeze(-1)  # (B, L, 1)
        h = self.hist_id(hist)  # (B, L, d)
        mean_id = (h * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        # Content of the history too: the text space is where new items live.
        safe = hist.clamp(max=self.cfg.n_items - 1)
        mean_items = (self.item_id(safe) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        cats = torch.cat([emb(user_cats[:, j]) for j, emb in enumerate(self.user_cats)], dim=-1)
        x = torch.cat([mean_id, mean_items, cats], dim=-1)
        return F.normalize(self.user_mlp(x), dim=-1)

    def in_batch_loss(self, u: Tensor, v: Tensor, item_idx: Tensor, log_q: Tensor) -> Tensor:
        """Sampled softmax with in-batch negatives and log-Q correction.

        u, v (B, d); log_q (B,) log of each item's sampling probability (its share of training interactions).
        In-batch negatives are drawn ∝ popularity, so popular items are over-penalised as negatives; subtracting
        log q_j from logit (i, j) makes the estimator consistent with the full softmax (Yi et al., RecSys 2019).
        """
        logits = u @ v.T / self.cfg.temperature - log_q[None, :]  # (B, B)
        # The same item twice in a batch is not a negative for itself: mask those off-diagonal duplicates.
        dup = (item_idx[:, None] == item_idx[None, :]) & ~torch.eye(len(item_idx), dtype=torch.bool, device=u.device)
        logits = logits.masked_fill(dup, float("-inf"))
        target = torch.arange(len(item_idx), device=u.device)
        return F.cross_entropy(logits, target)


@dataclass(kw_only=True)
class RankerConfig:
    n_items: int
    n_occupations: int
    n_dense: int
    dim: int = 32
    heads: int = 4
    hidden: int = 128
    dropout: float = 0.1


class DeepRanker(nn.Module):
    """Pointwise ranker: target-item attention over the user's recent items (DIN-style) + dense features.

    The candidate item is the query; the recent items are keys/values, so the interest vector is "the part of
    the history that is about this candidate" (a sci-fi candidate attends to the sci-fi history).
    """

    def __init__(self, cfg: RankerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n = cfg.n_items
        self.item = nn.Embedding(n + 2, cfg.dim, padding_idx=n + 1)
        self.attn = MultiHeadAttention(cfg.dim, cfg.heads, dropout=cfg.dropout)
        self.user_cats = user_cat_embeddings(cfg.n_occupations, 8)
        self.dense_norm = nn.LayerNorm(cfg.n_dense)
        self.mlp = nn.Sequential(
            nn.Linear(3 * cfg.dim + 3 * 8 + cfg.n_dense, cfg.hidden),
            nn.ReLU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, cfg.hidden // 2),
            nn.ReLU(),
            nn.Linear(cfg.hidden // 2, 1),
        )

    def forward(self, item_idx: Tensor, hist: Tensor, user_cats: Tensor, dense: Tensor) -> Tensor:
        """item_idx (B,), hist (B, L), user_cats (B, 3), dense (B, n_dense) -> logits (B,)."""
        pad = self.cfg.n_items + 1
        target = self.item(item_idx)  # (B, d)
        keys = self.item(hist)  # (B, L, d)
        interest = self.attn(target[:, None, :], keys, keys, key_padding_mask=hist == pad)[:, 0]  # (B, d)
        cats = torch.cat([emb(user_cats[:, j]) for j, emb in enumerate(self.user_cats)], dim=-1)
        x = torch.cat([target, interest, target * interest, cats, self.dense_norm(dense)], dim=-1)
        return self.mlp(x).squeeze(-1)

    def score_candidates(self, item_idx: Tensor, hist: Tensor, user_cats: Tensor, dense: Tensor) -> Tensor:
        """Serving path: B candidates of *one* user. item_idx (B,), hist (1, L), user_cats (1, 3) -> logits (B,).

        Same numbers as ``forward`` with the history repeated B times, but the keys/values of the history are
        projected once (1, H, L, D) and broadcast against the B queries in the attention matmuls, instead of
        B identical copies: the attention was ~60% of the ranker's CPU per request.
        """
        pad = self.cfg.n_items + 1
        target = self.item(item_idx)  # (B, d)
        keys = self.item(hist)  # (1, L, d)
        interest = self.attn(target[:, None, :], keys, keys, key_padding_mask=hist == pad)[:, 0]  # (B, d)
        cats = torch.cat([emb(user_cats[:, j]) for j, emb in enumerate(self.user_cats)], dim=-1)  # (1, 24)
        b = item_idx.shape[0]
        x = torch.cat([target, interest, target * interest, cats.expand(b, -1), self.dense_norm(dense)], dim=-1)
        return self.mlp(x).squeeze(-1)


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
