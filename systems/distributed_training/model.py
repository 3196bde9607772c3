"""A small decoder-only transformer language model (GPT-style) and its typed config.

The model is plain ``nn.Module`` code that imports cleanly on CPU; all distributed machinery
(DDP, checkpoints, launchers) lives in ``train.py``. Attention is the shared
``systems.blocks.attention.MultiHeadAttention`` (causal self-attention via ``is_causal=True``);
``fused_attention=True`` (the ``gpu_124m`` preset) dispatches it to ``F.scaled_dot_product_attention``.

Presets are functions (``cpu_debug()``, ``cpu_small()``, ``gpu_124m()``) returning a ``ModelConfig``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from systems.blocks.attention import MultiHeadAttention


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Shape of the language model."""

    vocab_size: int = 256  # byte-level tokens (0..255); see data.py
    block_size: int = 64  # context length T
    n_layer: int = 2  # transformer blocks
    n_head: int = 2  # attention heads per block
    n_embd: int = 64  # model width E (must be divisible by n_head)
    dropout: float = 0.0  # 0 keeps 1-vs-N-process runs bit-comparable (no RNG in the forward)
    fused_attention: bool = False  # F.scaled_dot_product_attention instead of the explicit (B,H,T,T) matrix

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if min(self.vocab_size, self.block_size, self.n_layer, self.n_head) < 1:
            raise ValueError(f"all sizes must be positive: {self}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1): {self.dropout}")

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def model_cpu_debug() -> ModelConfig:
    """~0.1 M parameters: for tests and golden-loss files (a step takes milliseconds)."""
    return ModelConfig(vocab_size=256, block_size=32, n_layer=2, n_head=2, n_embd=32)


def model_cpu_small() -> ModelConfig:
    """~0.8 M parameters: large enough that compute dominates a step, so scaling can be measured."""
    return ModelConfig(vocab_size=256, block_size=128, n_layer=4, n_head=4, n_embd=128)


def model_gpu_124m() -> ModelConfig:
    """GPT-2 small shapes (12 x 768, 12 heads, T=1024). With the 50,304-row embedding of a
    GPT-2-sized (padded) vocabulary this is 124 M parameters; our byte tokenizer uses the first 256 rows.
    Fused attention: at T = 1024 the explicit (B, H, T, T) scores would cost ~9 GB of activations per GPU."""
    return ModelConfig(vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768, fused_attention=True)


MODEL_PRESETS = {
    "cpu_debug": model_cpu_debug,
    "cpu_small": model_cpu_small,
    "gpu_124m": model_gpu_124m,
}


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)); x + mlp(ln(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = MultiHeadAttention(cfg.n_embd, cfg.n_head, dropout=cfg.dropout, fused=cfg.fused_attention)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.n_embd, 4 * cfg.n_embd),
            nn.GELU(),
            nn.Linear(4 * cfg.n_embd, cfg.n_embd),
            nn.Dropout(cfg.dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, T, E)
        x = x + self.attn(self.ln_1(x), is_causal=True)  # causal self-attention, (B, T, E)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Decoder-only LM: token + learned position embeddings, N blocks, tied output head."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying: saves V*E parameters
        self.apply(self._init_weights)
        # GPT-2 scaled init of residual projections: keeps the residual stream's variance flat in depth.
        for name, p in self.named_parameters():
            if name.endswith("mlp.2.weight") or name.endswith("out_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, *, non_embedding: bool = True) -> int:
        """Parameter count; position embeddings excluded by default (the FLOPs formula wants that)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if non_embedding else n

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx, targets: (B, T) int64. Returns logits (B, T, V) and the mean cross-entropy (or None)."""
        _, t = idx.shape
        if t > self.cfg.block_size:
            raise ValueError(f"sequence length {t} > block_size {self.cfg.block_size}")
        pos = torch.arange(t, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, E)
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        loss = None
        if targets is not None:
            # float() so the loss is computed in fp32 even under bf16/fp16 autocast
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss


def flops_per_token(cfg: ModelConfig, n_params: int) -> float:
    """Training FLOPs per token: 6N for the matmuls (fwd + bwd) + 12*L*E*T for attention scores
    (PaLM appendix B / nanoGPT ``estimate_mfu``)."""
    return 6.0 * n_params + 12.0 * cfg.n_layer * cfg.n_embd * cfg.block_size


@torch.no_grad()
def generate(model: GPT, idx: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0) -> torch.Tensor:
    """Sample ``max_new_tokens`` tokens after ``idx`` (B, T); returns (B, T + max_new_tokens)."""
    for _ in range(max_new_tokens):
        ctx = idx[:, -model.cfg.block_size :]
        logits, _ = model(ctx)
        probs = F.softmax(logits[:, -1, :] / max(temperature, 1e-6), dim=-1)
        idx = torch.cat([idx, torch.multinomial(probs, num_samples=1)], dim=1)
    return idx


def estimate_params(cfg: ModelConfig) -> int:
    """Parameter count from the shapes alone (no allocation): per block 12E² + 13E (QKV + out proj with
    biases, 2 LayerNorms, 4x MLP), plus token (tied with the head) and position embeddings and ln_f."""
    e = cfg.n_embd
    return cfg.n_layer * (12 * e * e + 13 * e) + cfg.vocab_size * e + cfg.block_size * e + 2 * e
