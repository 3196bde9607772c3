"""Regularisation in deep learning, measured: one network small data can overfit, eight ways to stop it.

    mlsd modeling regularization [--quick] --out .mlsd/modeling/regularization.json   # JSON + PNG

The question
------------
    "Explain regularisation in deep learning. Describe at least three techniques and their trade-offs."

What the interviewer tests
--------------------------
* That regularisation trades training fit for generalisation (a smaller train/validation gap, not a lower
  training loss), and that its strength is a hyper-parameter chosen on validation data.
* The mechanics and side effects of each technique: L2 shrinks every weight but zeroes none, L1 zeroes weights
  (sparsity, feature selection); L2-in-the-loss is *not* weight decay under Adam (the penalty's gradient is
  rescaled by Adam's per-weight step size, so AdamW decouples it); dropout trains a noisy ensemble and slows
  convergence; batch normalisation makes the layer before it scale-invariant, so weight decay on that layer
  no longer limits capacity but raises the effective learning rate; early stopping costs nothing but a
  validation set; augmentation adds invariances the data did not show.

Approach
--------
The real scikit-learn digits (1,797 8x8 images, bundled in the wheel: offline), with only 300 training images
so a 64-512-10 network (``systems.blocks.feedforward.FeedForwardClassifier``, 38k parameters) overfits them
within a few dozen epochs. Validation (500 images) chooses every strength; the remaining 997 are the test set,
read once per chosen configuration. Every configuration trains with the same budget (Adam, lr 1e-3, batch
32, the same epochs) over several seeds; test accuracy is reported as a mean over seeds with a t-interval,
and each technique's difference from no regularisation with a paired bootstrap interval over test images.

L1 is applied as a proximal step (soft-thresholding ``w <- sign(w) max(|w| - lr*lambda, 0)`` after each
Adam step), the way sparsity is obtained in practice: a subgradient of ``|w|`` makes weights oscillate around
zero without ever reaching it. Augmentation shifts each training image by up to ``s`` pixels (the same
shifts the image-pipeline block writes as copies), on the fly. Early stopping keeps the weights of the epoch
with the lowest validation loss.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from systems.modeling.experiment import Progress, mean_ci, set_seed

__all__ = ["TECHNIQUES", "Config", "load_digits_split", "plot", "run", "train_one"]

N_TRAIN, N_VAL = 300, 500
HIDDEN = 512
LR = 1e-3
BATCH = 32


@dataclass(frozen=True, kw_only=True)
class Config:
    """One training configuration; every field off is the unregularised baseline."""

    technique: str
    strength: float = 0.0  # the technique's knob (penalty, decay, rate, shift in pixels)
    dropout: float = 0.0
    batchnorm: bool = False
    l2: float = 0.0  # L2 penalty in the loss (torch Adam's weight_decay: coupled with Adam's scaling)
    decay: float = 0.0  # AdamW's decoupled weight decay
    l1: float = 0.0  # proximal L1 on weight matrices
    shift: int = 0  # augmentation: random shift of up to this many pixels
    early_stop: bool = False  # restore the weights of the lowest validation loss


def configs(quick: bool) -> list[Config]:
    """The grid: each technique over its strengths (fewer in the quick form)."""

    def pick(full: list[float], quick_values: list[float]) -> list[float]:
        return quick_values if quick else full

    out = [Config(technique="none")]
    out += [Config(technique="l2", strength=s, l2=s) for s in pick([1e-4, 1e-3, 1e-2, 1e-1], [1e-2])]
    out += [Config(technique="adamw", strength=s, decay=s) for s in pick([0.03, 0.1, 0.3, 1.0], [0.3])]
    out += [Config(technique="l1", strength=s, l1=s) for s in pick([0.01, 0.03, 0.1, 0.3], [0.1])]
    out += [Config(technique="dropout", strength=s, dropout=s) for s in pick([0.1, 0.3, 0.5, 0.7], [0.5])]
    out += [Config(technique="batchnorm", batchnorm=True)]
    out += [Config(technique="batchnorm+decay", strength=s, batchnorm=True, decay=s) for s in pick([0.1, 1.0], [1.0])]
    out += [Config(technique="early_stopping", early_stop=True)]
    out += [Config(technique="augmentation", strength=float(s), shift=s) for s in (1, 2)[: 1 if quick else 2]]
    return out


TECHNIQUES = (
    "none",
    "l2",
    "adamw",
    "l1",
    "dropout",
    "batchnorm",
    "batchnorm+decay",
    "early_stopping",
    "augmentation",
)


def load_digits_split(seed: int = 0) -> dict[str, np.ndarray]:
    """Stratified 300 / 500 / 997 split of the digits; pixels scaled to [0, 1]. The split is fixed by ``seed``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)  # (1797, 64)
    y = digits.target.astype(np.int64)
    x_tr, x_rest, y_tr, y_rest = train_test_split(x, y, train_size=N_TRAIN, stratify=y, random_state=seed)
    x_va, x_te, y_va, y_te = train_test_split(x_rest, y_rest, train_size=N_VAL, stratify=y_rest, random_state=seed)
    return {"x_train": x_tr, "y_train": y_tr, "x_val": x_va, "y_val": y_va, "x_test": x_te, "y_test": y_te}


def _model(cfg: Config) -> Any:
    import torch
    from torch import nn

    from systems.blocks.feedforward import FeedForwardClassifier

    class BatchNormFeedForward(FeedForwardClassifier):
        """The block with batch normalisation between the first linear layer and its ReLU."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.bn = nn.BatchNorm1d(self.fc1.out_features)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.drop(self.act(self.bn(self.fc1(x))))  # (B, h): fc1's scale no longer matters
            return self.fc2(h)  # (B, c)

    cls = BatchNormFeedForward if cfg.batchnorm else FeedForwardClassifier
    return cls(64, HIDDEN, 10, dropout=cfg.dropout)


def _shift_batch(x: Any, max_shift: int, gen: Any) -> Any:
    """Shift each (8x8) image by (dy, dx) in [-s, s]^2 pixels, zero-filled (no wrap-around)."""
    import torch
    import torch.nn.functional as F

    b = x.shape[0]
    img = x.view(b, 1, 8, 8)
    s = max_shift
    padded = F.pad(img, (s, s, s, s))  # (B, 1, 8+2s, 8+2s)
    dy = torch.randint(0, 2 * s + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * s + 1, (b,), generator=gen)
    rows = (dy[:, None] + torch.arange(8)[None, :])[:, :, None]  # (B, 8, 1)
    cols = (dx[:, None] + torch.arange(8)[None, :])[:, None, :]  # (B, 1, 8)
    out = padded[torch.arange(b)[:, None, None], 0, rows, cols]  # (B, 8, 8)
    return out.reshape(b, 64)


def _evaluate(model: Any, x: Any, y: Any) -> tuple[float, float, Any]:
    import torch
    import torch.nn.functional as F

    model.eval()
    with torch.inference_mode():
        logits = model(x)
        loss = float(F.cross_entropy(logits, y))
        correct = (logits.argmax(1) == y).numpy()
    model.train()
    return loss, float(correct.mean()), correct


def train_one(cfg: Config, data: dict[str, np.ndarray], *, seed: int, epochs: int, eval_every: int) -> dict[str, Any]:
    """Train one configuration; returns curves, final train/val/test numbers, sparsity and time."""
    import torch
    import torch.nn.functional as F

    set_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    t = {k: torch.as_tensor(v) for k, v in data.items()}
    model = _model(cfg)
    if cfg.decay > 0:
        opt: torch.optim.Optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=cfg.decay)
    else:  # torch's Adam weight_decay adds l2 * w to the gradient: the L2 penalty, rescaled by Adam
        opt = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=cfg.l2)
    matrices = [p for name, p in model.named_parameters() if name.endswith("weight") and p.ndim == 2]
    n = len(t["x_train"])
    curves: dict[str, list[float]] = {k: [] for k in ("epoch", "train_loss", "val_loss", "train_acc", "val_acc")}
    best: tuple[float, int, dict[str, Any]] | None = None
    t0 = time.perf_counter()
    model.train()
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(n, generator=gen)
        for s in range(0, n, BATCH):
            idx = perm[s : s + BATCH]
            xb, yb = t["x_train"][idx], t["y_train"][idx]  # (B, 64), (B,)
            if cfg.shift:
                xb = _shift_batch(xb, cfg.shift, gen)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if cfg.l1 > 0:  # proximal step: soft-threshold -> exact zeros
                with torch.no_grad():
                    for w in matrices:
                        w.copy_(torch.sign(w) * torch.clamp(w.abs() - LR * cfg.l1, min=0.0))
        if epoch % eval_every == 0 or epoch == epochs:
            tr_loss, tr_acc, _ = _evaluate(model, t["x_train"], t["y_train"])
            va_loss, va_acc, _ = _evaluate(model, t["x_val"], t["y_val"])
            for key, value in zip(curves, (epoch, tr_loss, va_loss, tr_acc, va_acc), strict=True):
                curves[key].append(value)
            if cfg.early_stop and (best is None or va_loss < best[0]):
                best = (va_loss, epoch, copy.deepcopy(model.state_dict()))
    seconds = time.perf_counter() - t0
    stopped = epochs
    if cfg.early_stop and best is not None:
        model.load_state_dict(best[2])
        stopped = best[1]
    tr_loss, tr_acc, _ = _evaluate(model, t["x_train"], t["y_train"])
    va_loss, va_acc, _ = _evaluate(model, t["x_val"], t["y_val"])
    te_loss, te_acc, te_correct = _evaluate(model, t["x_test"], t["y_test"])
    weights = torch.cat([w.detach().flatten() for w in matrices]).abs()
    return {
        "train_loss": tr_loss,
        "train_acc": tr_acc,
        "val_loss": va_loss,
        "val_acc": va_acc,
        "test_loss": te_loss,
        "test_acc": te_acc,
        "gap_acc": tr_acc - va_acc,  # generalisation gap in accuracy (train - validation)
        "gap_loss": va_loss - tr_loss,  # ... and in cross-entropy (validation - train)
        "zero_fraction": float((weights == 0).float().mean()),  # exact zeros in the weight matrices
        "small_fraction": float((weights < 1e-3).float().mean()),  # |w| < 1e-3
        "fc1_norm": float(model.fc1.weight.detach().norm()),
        "stopped_epoch": stopped,
        "seconds": seconds,
        "curves": curves,
        "test_correct": te_correct,
        "weights_abs": weights.numpy(),
    }


def run(*, quick: bool = False, seed: int = 0, progress: Progress) -> dict[str, Any]:
    """Every configuration over the seeds; strengths chosen on validation; test read for the chosen ones."""
    from systems.common.bench import bootstrap_ci

    data = load_digits_split(seed)
    seeds = [seed] if quick else [seed, seed + 1, seed + 2]
    epochs, eval_every = (40, 4) if quick else (150, 5)
    grid = configs(quick)
    runs: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for i, cfg in enumerate(grid):
        for s in seeds:
            progress(f"regularization: {cfg.technique} {cfg.strength:g} seed {s} ({i + 1}/{len(grid)})")
            runs.setdefault((cfg.technique, cfg.strength), []).append(
                train_one(cfg, data, seed=s, epochs=epochs, eval_every=eval_every)
            )

    def avg(rs: list[dict[str, Any]], key: str) -> float:
        return float(np.mean([r[key] for r in rs]))

    sweep: dict[str, list[dict[str, Any]]] = {}
    for (tech, strength), rs in runs.items():
        sweep.setdefault(tech, []).append(
            {
                "strength": strength,
                **{
                    k: avg(rs, k)
                    for k in ("train_acc", "val_acc", "val_loss", "gap_acc", "gap_loss", "zero_fraction", "seconds")
                },
                "small_fraction": avg(rs, "small_fraction"),
                "fc1_norm": avg(rs, "fc1_norm"),
            }
        )
    # the choice: highest mean validation accuracy, ties to the lower validation loss. Test is not read here.
    chosen = {
        tech: max(rows, key=lambda r: (round(r["val_acc"], 6), -r["val_loss"]))["strength"]
        for tech, rows in sweep.items()
    }
    base_correct = np.mean([r["test_correct"] for r in runs[("none", 0.0)]], axis=0)  # (n_test,) over seeds
    techniques: dict[str, Any] = {}
    for tech, strength in chosen.items():
        rs = runs[(tech, strength)]
        correct = np.mean([r["test_correct"] for r in rs], axis=0)
        lo, hi = bootstrap_ci(lambda a, b: float(a.mean() - b.mean()), correct, base_correct, n_boot=2000, seed=seed)
        techniques[tech] = {
            "strength": strength,
            "test_acc": mean_ci([r["test_acc"] for r in rs]),
            "test_acc_minus_none": {"mean": float(correct.mean() - base_correct.mean()), "lo": lo, "hi": hi},
            "train_acc": avg(rs, "train_acc"),
            "val_acc": avg(rs, "val_acc"),
            "gap_acc": avg(rs, "gap_acc"),
            "gap_loss": avg(rs, "gap_loss"),
            "zero_fraction": avg(rs, "zero_fraction"),
            "small_fraction": avg(rs, "small_fraction"),
            "fc1_norm": avg(rs, "fc1_norm"),
            "stopped_epoch": avg(rs, "stopped_epoch"),
            "seconds_per_run": avg(rs, "seconds"),
            "curves": rs[0]["curves"],
        }
    # sparsity at comparable strength: the strongest L1 and L2 of the grid (the claim does not rest on the choice)
    l1_max = max(r["strength"] for r in sweep["l1"])
    l2_max = max(r["strength"] for r in sweep["l2"])
    hist_src = {
        "none": runs[("none", 0.0)][0]["weights_abs"],
        f"l2 {l2_max:g}": runs[("l2", l2_max)][0]["weights_abs"],
        f"l1 {l1_max:g}": runs[("l1", l1_max)][0]["weights_abs"],
    }
    bn, bn_decay = techniques["batchnorm"], max(sweep["batchnorm+decay"], key=lambda r: r["strength"])
    ranking = sorted(techniques, key=lambda k: -techniques[k]["test_acc"]["mean"])
    return {
        "question": "Explain regularisation in deep learning. Describe at least three techniques and their trade-offs.",
        "data": {
            "dataset": "scikit-learn digits (8x8, 10 classes)",
            "train": len(data["y_train"]),
            "val": len(data["y_val"]),
            "test": len(data["y_test"]),
        },
        "setup": {
            "model": f"FeedForwardClassifier 64-{HIDDEN}-10 (systems/blocks/feedforward.py), BN variant for batchnorm",
            "optimizer": f"Adam lr {LR} (AdamW for decoupled decay), batch {BATCH}",
            "epochs": epochs,
            "seeds": seeds,
            "selection": "each technique's strength by mean validation accuracy over seeds; test read once after",
        },
        "sweep": sweep,
        "chosen": chosen,
        "techniques": techniques,
        "ranking_by_test_acc": ranking,
        "best": ranking[0],
        "sparsity": {
            "l1_strength": l1_max,
            "l2_strength": l2_max,
            "l1_zero_fraction": next(r["zero_fraction"] for r in sweep["l1"] if r["strength"] == l1_max),
            "l2_zero_fraction": next(r["zero_fraction"] for r in sweep["l2"] if r["strength"] == l2_max),
            "none_zero_fraction": sweep["none"][0]["zero_fraction"],
        },
        "batchnorm_decay": {
            "decay": bn_decay["strength"],
            "fc1_norm_without": bn["fc1_norm"],
            "fc1_norm_with": bn_decay["fc1_norm"],
            # BN makes fc1 scale-invariant, so its effective step is ~ lr / |w|^2: shrinking |w| raises it
            "effective_lr_ratio": (bn["fc1_norm"] / bn_decay["fc1_norm"]) ** 2,
            "val_acc_without": bn["val_acc"],
            "val_acc_with": bn_decay["val_acc"],
        },
        "weight_hist": {
            name: [*np.histogram(np.log10(w[w > 0]), bins=40, range=(-8, 0))[0].tolist(), int((w == 0).sum())]
            for name, w in hist_src.items()
        },
    }


def plot(result: dict[str, Any], png: Path) -> None:
    """Four panels: loss curves, generalisation gap vs strength, test accuracy with CIs, weight magnitudes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tech = result["techniques"]
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    ax = axes[0, 0]
    for i, name in enumerate(["none", "l2", "dropout", "batchnorm", "augmentation", "l1"]):
        if name not in tech:
            continue
        c, colour = tech[name]["curves"], f"C{i}"
        ax.plot(c["epoch"], c["val_loss"], "-", color=colour, label=f"{name} val")
        ax.plot(c["epoch"], c["train_loss"], ":", color=colour)
    stop = tech["early_stopping"]["stopped_epoch"]
    ax.axvline(stop, color="grey", ls="--", lw=0.8, label=f"early stop (epoch {stop:.0f})")
    ax.set(xlabel="epoch", ylabel="cross-entropy (solid val, dotted train)", yscale="log", title="training curves")
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    for i, (name, rows) in enumerate(result["sweep"].items()):
        xs = [r["strength"] for r in rows if r["strength"] > 0]
        if len(xs) < 2:
            continue
        ax.plot(xs, [r["gap_loss"] for r in rows if r["strength"] > 0], "o-", color=f"C{i}", label=name)
    ax.axhline(result["sweep"]["none"][0]["gap_loss"], color="k", ls="--", label="none")
    ax.set(xscale="log", xlabel="strength", ylabel="val loss - train loss", title="generalisation gap vs strength")
    ax.legend(fontsize=7)
    ax = axes[1, 0]
    names = result["ranking_by_test_acc"]
    means = [tech[n]["test_acc"]["mean"] for n in names]
    err = [
        [m - tech[n]["test_acc"]["lo"] for n, m in zip(names, means, strict=True)],
        [tech[n]["test_acc"]["hi"] - m for n, m in zip(names, means, strict=True)],
    ]
    ax.barh(range(len(names)), means, xerr=err, color="C0", alpha=0.7)
    ax.set_yticks(range(len(names)), [f"{n} ({tech[n]['strength']:g})" for n in names], fontsize=8)
    ax.set_xlim(min(means) - 0.03, 1.0)
    ax.invert_yaxis()
    ax.set(xlabel="test accuracy (mean over seeds, 95% t-interval)", title="chosen on validation, read on test")
    ax = axes[1, 1]
    edges = np.linspace(-8, 0, 41)
    for i, (name, counts) in enumerate(result["weight_hist"].items()):
        ax.stairs(counts[:-1], edges, color=f"C{i}", label=f"{name}: {counts[-1]:,} exact zeros")
    ax.set(xlabel="log10 |w| (non-zero weights)", ylabel="weights", title="weight magnitudes: L1 zeroes, L2 shrinks")
    ax.legend(fontsize=8)
    fig.suptitle(f"regularisation on digits ({result['data']['train']} training images, {result['form']} form)")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
