"""GANs, measured: a digits GAN with its training dynamics and mode collapse, and a tabular GAN vs SMOTE.

    mlsd modeling gan [--quick] --out .mlsd/modeling/gan.json   # JSON + PNG

The question
------------
    "Describe the architecture and advantages of a GAN. What are common difficulties in training GANs?"

What the interviewer tests
--------------------------
* The architecture: a generator maps noise (and, in a conditional GAN, a label) to samples; a discriminator
  learns to tell them from real data; they play a minimax game, and the generator never sees the data, only
  the discriminator's gradient. Advantages: sharp samples from one forward pass, no explicit likelihood.
* The difficulties, and that they can be *measured*: no loss that tracks quality (the two losses oscillate
  around an equilibrium, they do not go down), mode collapse (the generator covers a few modes of the data),
  vanishing gradients when the discriminator wins, sensitivity to hyper-parameters and seeds; the remedies
  (non-saturating loss, one-sided label smoothing, spectral normalisation, Wasserstein loss with gradient
  penalty) and what each costs.
* Judgement on using a GAN for data (oversampling a rare class): whether it beats the simple baseline
  (SMOTE) on the metric that matters, measured on a held-out period.

Approach
--------
Part 1, digits (8x8, scikit-learn's bundled set, offline): MLP generator and discriminator trained with the
non-saturating loss ("vanilla") and with remedies: one-sided label smoothing, spectral normalisation of the
discriminator, and WGAN-GP. A classifier trained on real digits (the ``FeedForwardClassifier`` block,
held-out accuracy reported) labels generated samples: *class coverage* (classes receiving at least a quarter
of their uniform share), the normalised entropy of the class histogram, the largest class's share, and a
Fréchet distance in the classifier's hidden features to held-out real digits (an FID for 8x8 digits). Mode
collapse is flagged when coverage drops below 8 of 10 classes or one class takes more than 30 % of samples
at any logged step. Several seeds per variant: GAN outcomes vary with the seed.

Part 2, fraud: a conditional tabular GAN (generator and spectrally normalised discriminator conditioned on
the class, trained CTGAN-style with class-balanced batches on quantile-normalised features) oversamples the
fraud class of the fraud system's training window to the same ratio as fraud's SMOTE (5 genuine per fraud).
XGBoost (fraud's ``fit_model`` defaults) is trained on the original, SMOTE-augmented and GAN-augmented data
and scored on fraud's delayed protocol test days with its metrics (average precision, card precision@100),
over seeds, with a paired bootstrap interval of GAN minus SMOTE. Nothing is tuned for either sampler (both at
fraud's settings), so no validation choice is involved. A two-sample test (how well a classifier tells
synthetic frauds from real ones: 0.5 = indistinguishable) shows how faithful each sampler's frauds are.
Importing fraud's data, protocol and metrics is deliberate: this folder is research on fraud's problem.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from systems.modeling.experiment import Progress, mean_ci, set_seed

__all__ = ["VARIANTS", "class_metrics", "frechet_distance", "plot", "run", "train_digits_gan", "train_evaluator"]

Z_DIM = 16
VARIANTS = ("vanilla", "label_smoothing", "spectral_norm", "wgan_gp")
COVERED_SHARE = 0.025  # a class is covered when it gets at least a quarter of its uniform 10 % share
COLLAPSE_COVERAGE, COLLAPSE_MAX_SHARE = 8, 0.30


# ---------------------------------------------------------------------------------------------- digits


def digits_split(seed: int) -> dict[str, np.ndarray]:
    """Digits in [-1, 1] (the generator's tanh range): 70 % to train GANs and the evaluator, 30 % held out."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.data / 8.0 - 1.0).astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, d.target, test_size=0.3, stratify=d.target, random_state=seed)
    return {"x_train": x_tr, "y_train": y_tr, "x_test": x_te, "y_test": y_te}


def train_evaluator(data: dict[str, np.ndarray], *, seed: int) -> tuple[Any, float]:
    """The 'pretrained' classifier that judges samples: 64-128-10 block, held-out accuracy returned."""
    import torch
    import torch.nn.functional as F

    from systems.blocks.feedforward import FeedForwardClassifier

    set_seed(seed)
    x, y = torch.as_tensor(data["x_train"]), torch.as_tensor(data["y_train"])
    net = FeedForwardClassifier(64, 128, 10, dropout=0.2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(30):
        perm = torch.randperm(len(x), generator=gen)
        for s in range(0, len(x), 64):
            idx = perm[s : s + 64]
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.eval()
    with torch.inference_mode():
        acc = float((net(torch.as_tensor(data["x_test"])).argmax(1).numpy() == data["y_test"]).mean())
    return net, acc


def _features(evaluator: Any, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hidden activations (n, 128), class probabilities (n, 10)) of the evaluator."""
    import torch

    with torch.inference_mode():
        xt = torch.as_tensor(x, dtype=torch.float32)
        h = evaluator.act(evaluator.fc1(xt))  # (n, 128), the block's hidden layer
        return h.numpy().astype(np.float64), torch.softmax(evaluator.fc2(h), 1).numpy()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (the FID formula)."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # tr sqrt(S1 S2) = sum of sqrt of the eigenvalues of S1 S2 (real, >= 0 in exact arithmetic); this avoids
    # sqrtm's failure on the singular covariances that dead ReLU units give
    eig = np.linalg.eigvals(s1 @ s2)
    tr_covmean = float(np.sqrt(np.clip(eig.real, 0, None)).sum())
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def class_metrics(evaluator: Any, x: np.ndarray, real_features: np.ndarray) -> dict[str, Any]:
    """Coverage, entropy, largest share, confidence and Fréchet distance of samples ``x`` (n, 64)."""
    h, prob = _features(evaluator, x)
    share = np.bincount(prob.argmax(1), minlength=10) / len(x)
    nz = share[share > 0]
    coverage = int(np.sum(share >= COVERED_SHARE))
    return {
        "coverage": coverage,
        "collapsed": coverage < COLLAPSE_COVERAGE or float(share.max()) > COLLAPSE_MAX_SHARE,
        "entropy": float(-(nz * np.log(nz)).sum() / np.log(10)),  # 1 = uniform over the 10 classes
        "max_share": float(share.max()),
        "confident": float(np.mean(prob.max(1) >= 0.9)),
        "fd": frechet_distance(h, real_features),
        "shares": share.round(4).tolist(),
    }


def _digits_nets(variant: str) -> tuple[Any, Any]:
    from torch import nn
    from torch.nn.utils.parametrizations import spectral_norm

    gen = nn.Sequential(
        nn.Linear(Z_DIM, 128), nn.LeakyReLU(0.2), nn.Linear(128, 256), nn.LeakyReLU(0.2), nn.Linear(256, 64), nn.Tanh()
    )  # (B, 16) -> (B, 64)
    wrap = spectral_norm if variant == "spectral_norm" else (lambda m: m)
    disc = nn.Sequential(
        wrap(nn.Linear(64, 256)),
        nn.LeakyReLU(0.2),
        wrap(nn.Linear(256, 128)),
        nn.LeakyReLU(0.2),
        wrap(nn.Linear(128, 1)),
    )  # (B, 64) -> (B, 1) logit (a critic score for WGAN-GP)
    return gen, disc


def train_digits_gan(
    variant: str, data: dict[str, np.ndarray], evaluator: Any, *, seed: int, steps: int, log_every: int
) -> dict[str, Any]:
    """Train one variant; log losses and class metrics every ``log_every`` generator steps."""
    import torch
    import torch.nn.functional as F

    set_seed(seed)
    gen, disc = _digits_nets(variant)
    wgan = variant == "wgan_gp"
    lr, betas = (1e-4, (0.5, 0.9)) if wgan else (2e-4, (0.5, 0.999))
    opt_g = torch.optim.Adam(gen.parameters(), lr=lr, betas=betas)
    opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=betas)
    real_all = torch.as_tensor(data["x_train"])
    real_feats, _ = _features(evaluator, data["x_test"])
    real_target = 0.9 if variant == "label_smoothing" else 1.0  # one-sided: only the real label is smoothed
    n_critic, batch = (5 if wgan else 1), 64
    rng = torch.Generator().manual_seed(seed)
    z_eval = torch.randn(1000, Z_DIM, generator=rng)
    log: dict[str, list[float]] = {
        k: [] for k in ("step", "loss_g", "loss_d", "coverage", "entropy", "max_share", "fd")
    }
    acc_g, acc_d, n_acc = 0.0, 0.0, 0
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        for _ in range(n_critic):
            real = real_all[torch.randint(0, len(real_all), (batch,), generator=rng)]  # (B, 64)
            fake = gen(torch.randn(batch, Z_DIM, generator=rng)).detach()
            if wgan:
                # critic: maximise E[D(real)] - E[D(fake)], with a unit-gradient-norm penalty on interpolates
                eps = torch.rand(batch, 1, generator=rng)
                mix = (eps * real + (1 - eps) * fake).requires_grad_(True)
                grad = torch.autograd.grad(disc(mix).sum(), mix, create_graph=True)[0]  # (B, 64)
                penalty = ((grad.norm(dim=1) - 1) ** 2).mean()
                loss_d = disc(fake).mean() - disc(real).mean() + 10.0 * penalty
            else:
                lr_, lf_ = disc(real).squeeze(1), disc(fake).squeeze(1)
                loss_d = F.binary_cross_entropy_with_logits(lr_, torch.full_like(lr_, real_target))
                loss_d = loss_d + F.binary_cross_entropy_with_logits(lf_, torch.zeros_like(lf_))
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
        out = disc(gen(torch.randn(batch, Z_DIM, generator=rng))).squeeze(1)
        # non-saturating generator loss: maximise log D(G(z)) (strong gradients while D is winning)
        loss_g = -out.mean() if wgan else F.binary_cross_entropy_with_logits(out, torch.ones_like(out))
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        acc_g, acc_d, n_acc = acc_g + loss_g.item(), acc_d + loss_d.item(), n_acc + 1
        if step % log_every == 0 or step == steps:
            with torch.inference_mode():
                samples = gen(z_eval).numpy()
            m = class_metrics(evaluator, samples, real_feats)
            for key, value in (
                ("step", step),
                ("loss_g", acc_g / n_acc),
                ("loss_d", acc_d / n_acc),
                ("coverage", m["coverage"]),
                ("entropy", m["entropy"]),
                ("max_share", m["max_share"]),
                ("fd", m["fd"]),
            ):
                log[key].append(float(value))
            acc_g, acc_d, n_acc = 0.0, 0.0, 0
    seconds = time.perf_counter() - t0
    with torch.inference_mode():
        samples = gen(z_eval).numpy()
    final = class_metrics(evaluator, samples, real_feats)
    collapsed_at = [
        int(s)
        for s, c, ms in zip(log["step"], log["coverage"], log["max_share"], strict=True)
        if c < COLLAPSE_COVERAGE or ms > COLLAPSE_MAX_SHARE
    ]
    return {
        "final": final,
        "log": log,
        "collapse_flagged_steps": collapsed_at,
        "collapsed_at_end": final["collapsed"],
        "seconds": seconds,
        "samples": np.round(samples[:60], 3),  # 60 samples for the plot's grid
    }


# ----------------------------------------------------------------------------------------------- fraud


class TabularCGAN:
    """Conditional GAN for tabular rows: quantile-normalised features, class-balanced training batches.

    The generator takes (noise, one-hot class) and emits a row in the normalised space; the discriminator
    (spectrally normalised) sees (row, one-hot class). Sampling the class uniformly per batch is CTGAN's
    training-by-sampling: the rare class is seen as often as the common one, without duplicating it.
    """

    def __init__(self, *, seed: int, steps: int, z_dim: int = 32, hidden: int = 128, batch: int = 256) -> None:
        self.seed, self.steps, self.z_dim, self.hidden, self.batch = seed, steps, z_dim, hidden, batch
        self.losses: dict[str, list[float]] = {"step": [], "loss_g": [], "loss_d": []}

    def fit(self, x: np.ndarray, y: np.ndarray) -> TabularCGAN:
        import torch
        import torch.nn.functional as F
        from sklearn.preprocessing import QuantileTransformer
        from torch import nn
        from torch.nn.utils.parametrizations import spectral_norm

        set_seed(self.seed)
        self.qt = QuantileTransformer(output_distribution="normal", n_quantiles=1000, random_state=self.seed).fit(x)
        self.discrete = [j for j in range(x.shape[1]) if len(np.unique(x[:, j])) <= 2]  # flags stay flags
        self.values = {j: np.unique(x[:, j]) for j in self.discrete}
        xt = torch.as_tensor(self.qt.transform(x), dtype=torch.float32)  # (N, F)
        f, h = x.shape[1], self.hidden
        self.gen = nn.Sequential(
            nn.Linear(self.z_dim + 2, h), nn.LeakyReLU(0.2), nn.Linear(h, h), nn.LeakyReLU(0.2), nn.Linear(h, f)
        )
        disc = nn.Sequential(
            spectral_norm(nn.Linear(f + 2, h)),
            nn.LeakyReLU(0.2),
            spectral_norm(nn.Linear(h, h)),
            nn.LeakyReLU(0.2),
            spectral_norm(nn.Linear(h, 1)),
        )
        opt_g = torch.optim.Adam(self.gen.parameters(), lr=2e-4, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(disc.parameters(), lr=2e-4, betas=(0.5, 0.999))
        by_class = [torch.as_tensor(np.flatnonzero(y == c)) for c in (0, 1)]
        rng = torch.Generator().manual_seed(self.seed)
        eye = torch.eye(2)
        g_acc = d_acc = 0.0
        for step in range(1, self.steps + 1):
            cls = torch.randint(0, 2, (self.batch,), generator=rng)  # balanced conditions
            idx = torch.empty(self.batch, dtype=torch.long)
            for c in (0, 1):
                mask = cls == c
                pool = by_class[c]
                idx[mask] = pool[torch.randint(0, len(pool), (int(mask.sum()),), generator=rng)]
            cond = eye[cls]  # (B, 2)
            real = torch.cat([xt[idx], cond], 1)
            fake = torch.cat(
                [self.gen(torch.cat([torch.randn(self.batch, self.z_dim, generator=rng), cond], 1)), cond], 1
            )
            lr_, lf_ = disc(real).squeeze(1), disc(fake.detach()).squeeze(1)
            loss_d = F.binary_cross_entropy_with_logits(lr_, torch.ones_like(lr_)) + F.binary_cross_entropy_with_logits(
                lf_, torch.zeros_like(lf_)
            )
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            out = disc(fake).squeeze(1)
            loss_g = F.binary_cross_entropy_with_logits(out, torch.ones_like(out))
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            g_acc, d_acc = g_acc + loss_g.item(), d_acc + loss_d.item()
            if step % 100 == 0:
                self.losses["step"].append(step)
                self.losses["loss_g"].append(g_acc / 100)
                self.losses["loss_d"].append(d_acc / 100)
                g_acc = d_acc = 0.0
        self.gen.eval()
        return self

    def sample(self, n: int, cls: int) -> np.ndarray:
        import torch

        g = torch.Generator().manual_seed(self.seed + 1)
        with torch.inference_mode():
            cond = torch.eye(2)[torch.full((n,), cls)]
            z = torch.randn(n, self.z_dim, generator=g)
            out = self.qt.inverse_transform(self.gen(torch.cat([z, cond], 1)).numpy().astype(np.float64))
        for j, vals in self.values.items():  # snap flags to their observed values
            out[:, j] = vals[np.abs(out[:, j : j + 1] - vals[None, :]).argmin(1)]
        return out


def two_sample_auc(real: np.ndarray, synth: np.ndarray, *, seed: int) -> float:
    """Cross-validated AUC of a classifier telling synthetic rows from real ones (0.5: indistinguishable)."""
    import xgboost as xgb
    from sklearn.model_selection import cross_val_score

    n = min(len(real), len(synth))
    rng = np.random.default_rng(seed)
    a, b = real[rng.choice(len(real), n, replace=False)], synth[rng.choice(len(synth), n, replace=False)]
    x, y = np.vstack([a, b]), np.r_[np.zeros(n), np.ones(n)]
    clf = xgb.XGBClassifier(n_estimators=100, max_depth=3, learning_rate=0.1, n_jobs=2, random_state=seed)
    return float(cross_val_score(clf, x, y, cv=3, scoring="roc_auc").mean())


def fraud_oversampling(*, quick: bool, seed: int, progress: Progress) -> dict[str, Any]:
    """none vs SMOTE vs conditional GAN, XGBoost on fraud's delayed protocol, over seeds."""
    from systems.common.bench import bootstrap_ci
    from systems.fraud.data import handbook, simulate, small
    from systems.fraud.evaluate import card_precision_at_k, evaluate_scores
    from systems.fraud.features import FEATURES
    from systems.fraud.model import SMOTE_K, SMOTE_RATIO, fit_model, smote
    from systems.fraud.train import SplitConfig, add_features, delayed_split

    if quick:
        frame = add_features(simulate(small(seed)).transactions)
        split = delayed_split(frame, SplitConfig(start_day=31, train_days=9, calib_days=2, test_days=7))
    else:
        frame = add_features(simulate(handbook()).transactions)
        split = delayed_split(frame, SplitConfig())
    x = split.train[FEATURES].to_numpy(np.float64)  # fit + calibration days: no calibration needed for ranks
    y = split.train["fraud"].to_numpy(np.int64)
    xt = split.test[FEATURES].to_numpy(np.float64)
    seeds = [seed] if quick else [seed, seed + 1, seed + 2]
    xgb_params = {"n_estimators": 150, "learning_rate": 0.1, "n_jobs": 2} if quick else {"n_jobs": 2}
    n_new = int(np.sum(y == 0) / SMOTE_RATIO) - int(y.sum())
    per: dict[str, list[dict[str, float]]] = {"none": [], "smote": [], "cgan": []}
    scores: dict[str, list[np.ndarray]] = {k: [] for k in per}
    fidelity: dict[str, list[float]] = {"smote": [], "cgan": []}
    gan_losses: dict[str, list[float]] = {}
    gan_seconds: list[float] = []
    for s in seeds:
        progress(f"gan: fraud SMOTE seed {s}")
        xs, ys = smote(x, y, ratio=SMOTE_RATIO, k=SMOTE_K, seed=s)
        progress(f"gan: fraud conditional GAN seed {s}")
        t0 = time.perf_counter()
        cgan = TabularCGAN(seed=s, steps=400 if quick else 2000).fit(x, y)
        synth = cgan.sample(n_new, 1)
        gan_seconds.append(time.perf_counter() - t0)
        gan_losses = gan_losses or cgan.losses
        xg, yg = np.vstack([x, synth]), np.r_[y, np.ones(n_new, dtype=y.dtype)]
        fidelity["smote"].append(two_sample_auc(x[y == 1], xs[len(x) :], seed=s))
        fidelity["cgan"].append(two_sample_auc(x[y == 1], synth, seed=s))
        for name, (xa, ya) in {"none": (x, y), "smote": (xs, ys), "cgan": (xg, yg)}.items():
            progress(f"gan: fraud XGBoost on {name}, seed {s}")
            model = fit_model("xgboost", "none", xa, ya, features=FEATURES, seed=s, xgb_params=xgb_params)
            raw = model.raw_scores(xt)
            m = evaluate_scores(split.test, raw)
            per[name].append({"ap": m.ap, "cp@100": m.cp_at_100, "auc": m.auc})
            scores[name].append(raw)
    test = split.test.reset_index(drop=True)
    yt = test["fraud"].to_numpy()
    # paired bootstrap over test rows of the seed-averaged scores' ranks: GAN minus SMOTE
    avg = {k: np.mean([np.argsort(np.argsort(v)) for v in vs], axis=0) for k, vs in scores.items()}
    from sklearn.metrics import average_precision_score

    ap_lo, ap_hi = bootstrap_ci(
        lambda yy, a, b: average_precision_score(yy, a) - average_precision_score(yy, b),
        yt,
        avg["cgan"],
        avg["smote"],
        n_boot=500 if not quick else 100,
        seed=seed,
    )
    day, cust = test["day"].to_numpy(), test["customer_id"].to_numpy()
    idx_all = np.arange(len(yt))
    cp_lo, cp_hi = bootstrap_ci(
        lambda i: (
            card_precision_at_k(day[i], cust[i], yt[i], avg["cgan"][i])
            - card_precision_at_k(day[i], cust[i], yt[i], avg["smote"][i])
        ),
        idx_all,
        n_boot=200 if not quick else 30,
        seed=seed,
    )
    ap_point = float(average_precision_score(yt, avg["cgan"]) - average_precision_score(yt, avg["smote"]))
    cp_point = card_precision_at_k(day, cust, yt, avg["cgan"]) - card_precision_at_k(day, cust, yt, avg["smote"])
    summary = {
        name: {metric: mean_ci([r[metric] for r in rows]) for metric in ("ap", "cp@100", "auc")}
        for name, rows in per.items()
    }
    return {
        "protocol": {
            "train_days": split.config.periods()["fit"][0],
            "test_days": split.config.periods()["scored"],
            "train_rows": len(y),
            "train_frauds": int(y.sum()),
            "test_rows": len(yt),
            "test_frauds": int(yt.sum()),
            "synthetic_frauds": n_new,
            "ratio": f"{SMOTE_RATIO:g} genuine per fraud after oversampling (fraud's SMOTE_RATIO)",
            "model": "XGBoost, fraud's fit_model defaults" + (" (150 trees, lr 0.1)" if quick else ""),
            "seeds": seeds,
        },
        "per_seed": per,
        "summary": summary,
        "cgan_minus_smote": {
            "ap": summary["cgan"]["ap"]["mean"] - summary["smote"]["ap"]["mean"],
            # the same difference for the seed-averaged ranks (an ensemble of the seeds), with its paired
            # bootstrap interval over test rows
            "ap_seed_averaged_ranks": ap_point,
            "ap_ci_seed_averaged_ranks": [ap_lo, ap_hi],
            "cp@100_seed_averaged_ranks": cp_point,
            "cp@100": summary["cgan"]["cp@100"]["mean"] - summary["smote"]["cp@100"]["mean"],
            "cp@100_ci_seed_averaged_ranks": [cp_lo, cp_hi],
        },
        "two_sample_auc": {k: mean_ci(v) for k, v in fidelity.items()},
        "cgan_losses": gan_losses,
        "cgan_seconds": float(np.mean(gan_seconds)),
    }


# ------------------------------------------------------------------------------------------------- run


def run(*, quick: bool = False, seed: int = 0, progress: Progress) -> dict[str, Any]:
    data = digits_split(seed)
    evaluator, eval_acc = train_evaluator(data, seed=seed)
    real_feats, _ = _features(evaluator, data["x_test"])
    # references: held-out real digits (what a perfect generator scores) and an untrained generator
    half = len(data["x_test"]) // 2
    ref_real = class_metrics(evaluator, data["x_test"][:half], _features(evaluator, data["x_test"][half:])[0])
    set_seed(seed)
    untrained_gen, _ = _digits_nets("vanilla")
    import torch

    with torch.inference_mode():
        ref_untrained = class_metrics(evaluator, untrained_gen(torch.randn(1000, Z_DIM)).numpy(), real_feats)
    seeds = [seed] if quick else [seed, seed + 1, seed + 2]
    variants = ("vanilla", "spectral_norm") if quick else VARIANTS
    steps, log_every = (600, 150) if quick else (2000, 200)
    runs: dict[str, list[dict[str, Any]]] = {}
    for v in variants:
        for s in seeds:
            progress(f"gan: digits {v} seed {s}")
            runs.setdefault(v, []).append(
                train_digits_gan(v, data, evaluator, seed=s, steps=steps, log_every=log_every)
            )
    digits: dict[str, Any] = {}
    for v, rs in runs.items():
        digits[v] = {
            "coverage": mean_ci([r["final"]["coverage"] for r in rs]),
            "entropy": mean_ci([r["final"]["entropy"] for r in rs]),
            "max_share": mean_ci([r["final"]["max_share"] for r in rs]),
            "fd": mean_ci([r["final"]["fd"] for r in rs]),
            "confident": mean_ci([r["final"]["confident"] for r in rs]),
            "per_seed": [
                {k: r["final"][k] for k in ("coverage", "entropy", "max_share", "fd")}
                | {"collapse_flagged_logs": len(r["collapse_flagged_steps"]), "collapsed_at_end": r["collapsed_at_end"]}
                for r in rs
            ],
            "runs_collapsed_at_end": sum(r["collapsed_at_end"] for r in rs),
            "runs_ever_flagged": sum(bool(r["collapse_flagged_steps"]) for r in rs),
            "seconds_per_run": float(np.mean([r["seconds"] for r in rs])),
            "log": rs[0]["log"],
            "shares_seed0": rs[0]["final"]["shares"],
            "samples_seed0": rs[0]["samples"],
        }
    best = min(digits, key=lambda v: digits[v]["fd"]["mean"])
    progress("gan: fraud oversampling")
    fraud = fraud_oversampling(quick=quick, seed=seed, progress=progress)
    return {
        "question": "Describe the architecture and advantages of a GAN. What are common difficulties in training GANs?",
        "digits_setup": {
            "train": len(data["x_train"]),
            "held_out": len(data["x_test"]),
            "evaluator_accuracy": eval_acc,
            "steps": steps,
            "seeds": seeds,
            "collapse_rule": f"coverage < {COLLAPSE_COVERAGE} classes or one class > {COLLAPSE_MAX_SHARE:.0%}",
            "covered_share": COVERED_SHARE,
        },
        "reference": {"real_held_out": ref_real, "untrained_generator": ref_untrained},
        "digits": digits,
        "best_variant_by_fd": best,
        "fraud": fraud,
    }


def plot(result: dict[str, Any], png: Path) -> None:
    """Losses, coverage over training, samples of two variants, final class histograms, fraud bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = result["digits"]
    fig, axes = plt.subplots(2, 4, figsize=(19, 9))
    ax = axes[0, 0]
    for i, (v, r) in enumerate(d.items()):
        ax.plot(r["log"]["step"], r["log"]["loss_d"], "-", color=f"C{i}", label=f"{v} D")
        ax.plot(r["log"]["step"], r["log"]["loss_g"], ":", color=f"C{i}", label=f"{v} G")
    ax.set(xlabel="generator step", ylabel="loss (WGAN: critic scores)", title="training dynamics (seed 0)")
    ax.legend(fontsize=6)
    ax = axes[0, 1]
    for i, (v, r) in enumerate(d.items()):
        ax.plot(r["log"]["step"], r["log"]["coverage"], "o-", ms=3, color=f"C{i}", label=v)
    ax.axhline(COLLAPSE_COVERAGE, color="r", ls="--", lw=0.8, label="collapse threshold")
    ax.set(xlabel="generator step", ylabel="classes covered (of 10)", ylim=(0, 10.5), title="class coverage (seed 0)")
    ax.legend(fontsize=7)
    ax = axes[0, 2]
    for i, (v, r) in enumerate(d.items()):
        ax.plot(r["log"]["step"], r["log"]["fd"], "-", color=f"C{i}", label=v)
    ax.axhline(result["reference"]["real_held_out"]["fd"], color="k", ls="--", lw=0.8, label="real vs real")
    ax.set(
        xlabel="generator step",
        ylabel="Fréchet distance (evaluator features)",
        yscale="log",
        title="sample quality (seed 0)",
    )
    ax.legend(fontsize=7)
    ax = axes[0, 3]
    names = list(d)
    width = 0.8 / len(names)
    for i, v in enumerate(names):
        ax.bar(np.arange(10) + i * width, d[v]["shares_seed0"], width, label=v, color=f"C{i}")
    ax.axhline(0.1, color="k", lw=0.8, ls="--")
    ax.set(xlabel="class assigned by the evaluator", ylabel="share of 1,000 samples", title="class histogram (seed 0)")
    ax.legend(fontsize=7)
    for ax, v in ((axes[1, 0], "vanilla"), (axes[1, 1], result["best_variant_by_fd"])):
        digits = np.asarray(d[v]["samples_seed0"][:60]).reshape(6, 10, 8, 8)
        grid = np.full((6 * 9 + 1, 10 * 9 + 1), -1.0)  # one background pixel between digits
        for r in range(6):
            for c in range(10):
                grid[1 + 9 * r : 9 + 9 * r, 1 + 9 * c : 9 + 9 * c] = digits[r, c]
        ax.imshow(grid, cmap="gray_r", vmin=-1, vmax=1)
        ax.set_axis_off()
        ax.set_title(f"{v}: coverage {d[v]['coverage']['mean']:.1f}, FD {d[v]['fd']['mean']:.1f} (mean of seeds)")
    f = result["fraud"]["summary"]
    ax = axes[1, 2]
    strategies = list(f)
    for j, metric in enumerate(("ap", "cp@100")):
        means = [f[s][metric]["mean"] for s in strategies]
        err = [
            [m - f[s][metric]["lo"] for s, m in zip(strategies, means, strict=True)],
            [f[s][metric]["hi"] - m for s, m in zip(strategies, means, strict=True)],
        ]
        ax.bar(np.arange(len(strategies)) + 0.4 * j, means, 0.4, yerr=err, label=metric, capsize=3)
    ax.set_xticks(np.arange(len(strategies)) + 0.2, strategies)
    ax.set(ylabel="test metric (mean over seeds, t-interval)", title="fraud: oversampling the frauds (XGBoost)")
    ax.legend()
    ax = axes[1, 3]
    losses = result["fraud"]["cgan_losses"]
    ax.plot(losses["step"], losses["loss_d"], label="D")
    ax.plot(losses["step"], losses["loss_g"], label="G")
    ts = result["fraud"]["two_sample_auc"]
    ax.set(
        xlabel="step",
        ylabel="loss",
        title="tabular cGAN losses (seed 0); real-vs-synthetic AUC\n"
        f"cGAN {ts['cgan']['mean']:.2f}, SMOTE {ts['smote']['mean']:.2f}",
    )
    ax.legend()
    fig.suptitle(f"GANs ({result['form']} form)")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
