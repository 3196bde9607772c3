"""Trees vs deep networks, measured on tabular, image and text data with the same tuning budget.

    mlsd modeling trees_vs_dnn [--quick] --out .mlsd/modeling/trees_vs_dnn.json   # JSON + PNG

The question
------------
    "When would you choose a tree-based model over a deep network, and vice versa?"

What the interviewer tests
--------------------------
* The data-shape argument: on tabular data (heterogeneous columns, each meaningful on its own, irregular
  target functions, uninformative columns, medium row counts) gradient-boosted trees are the strong default;
  on unstructured data (pixels, tokens), where meaning lives in local patterns and the model must learn the
  representation, networks with the right inductive bias (convolutions, embeddings) win.
* The engineering side: training time, inference latency per row, the need for feature scaling,
  robustness to junk columns, and interpretability (exact tree SHAP vs approximations for networks).
* Knowledge of the evidence: Grinsztajn, Oyallon & Varoquaux (NeurIPS 2022), *Why do tree-based models still
  outperform deep learning on tabular data?*: trees win on medium-sized tabular data (~10k rows), and
  networks suffer more from uninformative features.

Approach
--------
Four real (or, for fraud, faithfully simulated) datasets, each split into train / validation / test:

* ``fraud`` (tabular): the fraud system's handbook-simulated transactions and its 22 point-in-time features,
  on its delayed protocol (train on the fit days, validate on the held-out calibration days, test on the test
  days; ``systems.fraud`` data and metric reused by import). Metric: average precision.
* ``reviews`` (tabular): the women's clothing reviews' *metadata* only (age, positive-feedback count, title and
  review length, division / department / class), predicting the recommended flag. Metric: ROC-AUC.
* ``digits`` (images): the 8x8 scikit-learn digits. Metric: accuracy.
* ``text``: Rotten Tomatoes snippets, fresh vs rotten. Metric: ROC-AUC.

Each model family gets the same budget: two configurations, each trained with early stopping on the
validation set, the better one chosen on validation. Gradient boosting is XGBoost (depth 4 or 8); the network
is the ``FeedForwardClassifier`` block (width 64 or 256, quantile-normalised inputs for tabular data, as in
Grinsztajn et al.); the unstructured sets add their natural network: a small CNN for digits and a bag of
learned word embeddings for text. The chosen configurations then give learning curves over training-set
size, robustness to added Gaussian noise columns (tabular), training time, single-row and batched latency,
and for the trees exact SHAP contributions (XGBoost ``pred_contribs``, TreeSHAP). Test metrics carry a
bootstrap interval over test rows, and the tree-minus-network difference a paired one.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from systems.modeling.experiment import Progress, set_seed

__all__ = ["GRINSZTAJN_2022", "Dataset", "load_datasets", "plot", "run"]

GRINSZTAJN_2022 = {
    "paper": "Grinsztajn, Oyallon, Varoquaux. Why do tree-based models still outperform deep learning on "
    "tabular data? NeurIPS 2022 Datasets and Benchmarks",
    "findings": [
        "tree-based models (XGBoost, random forests) outperform deep networks on medium-sized tabular data "
        "(~10k training rows), after the same random-search tuning budget",
        "MLP-like networks are hurt more than trees by uninformative features",
        "networks are biased towards smooth functions; trees fit irregular targets",
    ],
}


@dataclass
class Dataset:
    """A split dataset; ``kind`` picks the network family, ``metric`` the score (higher is better)."""

    name: str
    kind: str  # tabular | image | text
    metric: str  # ap | auc | accuracy
    x_train: Any
    y_train: np.ndarray
    x_val: Any
    y_val: np.ndarray
    x_test: Any
    y_test: np.ndarray
    features: list[str] = field(default_factory=list)
    texts: dict[str, list[str]] = field(default_factory=dict)  # raw texts per split (text only)

    @property
    def n_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_val.max(), self.y_test.max())) + 1


def score(metric: str, y: np.ndarray, p: np.ndarray) -> float:
    """``p``: (n,) positive-class scores for binary metrics, (n, c) class scores for accuracy."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    if metric == "accuracy":
        return float(np.mean(p.argmax(1) == y))
    if metric == "ap":
        return float(average_precision_score(y, p))
    return float(roc_auc_score(y, p))


# ------------------------------------------------------------------------------------------------ data


def _three_way(x: Any, y: np.ndarray, seed: int, n: int | None = None) -> tuple[Any, ...]:
    """Stratified 60 / 20 / 20 split (optionally of a stratified subsample of ``n`` rows)."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    if n is not None and n < len(y):
        idx, _ = train_test_split(idx, train_size=n, stratify=y, random_state=seed)
    tr, rest = train_test_split(idx, train_size=0.6, stratify=y[idx], random_state=seed)
    va, te = train_test_split(rest, train_size=0.5, stratify=y[rest], random_state=seed)
    return tr, va, te


def load_fraud(quick: bool, seed: int) -> Dataset:
    """Fraud features on the handbook's delayed protocol (fit days / calibration days / test days)."""
    from systems.fraud.data import handbook, simulate, small
    from systems.fraud.features import FEATURES
    from systems.fraud.train import SplitConfig, add_features, delayed_split

    if quick:  # the fraud tests' small preset: 1,000 cards, 60 days
        cfg = small(seed)
        split_cfg = SplitConfig(start_day=31, train_days=9, calib_days=2, test_days=7)
    else:
        cfg, split_cfg = handbook(), SplitConfig()
    split = delayed_split(add_features(simulate(cfg).transactions), split_cfg)

    def xy(df: Any) -> tuple[np.ndarray, np.ndarray]:
        return df[FEATURES].to_numpy(np.float64), df["fraud"].to_numpy(np.int64)

    (xtr, ytr), (xva, yva), (xte, yte) = xy(split.fit), xy(split.calib), xy(split.test)
    return Dataset("fraud", "tabular", "ap", xtr, ytr, xva, yva, xte, yte, features=list(FEATURES))


def load_reviews(quick: bool, seed: int) -> Dataset:
    """Clothing-review metadata (no words, only lengths and categories) -> recommended."""
    from systems.common.data import load_clothing_reviews

    df = load_clothing_reviews()
    feats = {
        "age": df["age"].to_numpy(np.float64),
        "positive_feedback": df["positive_feedback"].to_numpy(np.float64),
        "review_words": df["review_text"].str.split().str.len().fillna(0).to_numpy(np.float64),
        "title_words": df["title"].str.split().str.len().fillna(0).to_numpy(np.float64),
        "division": df["division"].cat.codes.to_numpy(np.float64),
        "department": df["department"].cat.codes.to_numpy(np.float64),
        "class_name": df["class_name"].cat.codes.to_numpy(np.float64),
        "item_reviews": df.groupby("clothing_id")["clothing_id"].transform("size").to_numpy(np.float64),
    }
    x = np.column_stack(list(feats.values()))
    y = df["recommended"].to_numpy(np.int64)
    tr, va, te = _three_way(x, y, seed, 3000 if quick else None)
    return Dataset("reviews", "tabular", "auc", x[tr], y[tr], x[va], y[va], x[te], y[te], features=list(feats))


def load_digit_images(quick: bool, seed: int) -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)
    tr, va, te = _three_way(x, y, seed)
    return Dataset(
        "digits", "image", "accuracy", x[tr], y[tr], x[va], y[va], x[te], y[te], features=[f"px{i}" for i in range(64)]
    )


def load_text(quick: bool, seed: int) -> Dataset:
    """Rotten Tomatoes fresh (1) vs rotten (0); bag-of-words for the trees, token ids for the network."""
    from sklearn.feature_extraction.text import CountVectorizer

    from systems.common.data import load_rotten_tomatoes

    df = load_rotten_tomatoes()
    df = df[df["label"] != "plot"].reset_index(drop=True)
    texts = df["text"].tolist()
    y = (df["label"] == "fresh").to_numpy(np.int64)
    tr, va, te = _three_way(np.zeros(len(y)), y, seed, 2000 if quick else None)
    vec = CountVectorizer(max_features=1000, binary=True, min_df=2).fit([texts[i] for i in tr])  # train only
    bow = vec.transform(texts).astype(np.float32).tocsr()
    return Dataset(
        "text",
        "text",
        "auc",
        bow[tr],
        y[tr],
        bow[va],
        y[va],
        bow[te],
        y[te],
        features=list(vec.get_feature_names_out()),
        texts={"train": [texts[i] for i in tr], "val": [texts[i] for i in va], "test": [texts[i] for i in te]},
    )


LOADERS: dict[str, Callable[[bool, int], Dataset]] = {
    "fraud": load_fraud,
    "reviews": load_reviews,
    "digits": load_digit_images,
    "text": load_text,
}


def load_datasets(quick: bool, seed: int, names: list[str] | None = None) -> list[Dataset]:
    return [LOADERS[n](quick, seed) for n in (names or list(LOADERS))]


# ---------------------------------------------------------------------------------------------- models


class Model:
    """A fitted model: ``predict(x) -> scores`` ((n,) binary, (n, c) multi-class) and its fit time."""

    family: str
    config: dict[str, Any]
    fit_s: float = 0.0

    def predict(self, x: Any) -> np.ndarray:
        raise NotImplementedError


class GBM(Model):
    """XGBoost with early stopping on the validation set (``hist``, 2 threads to fit, 1 to serve)."""

    family = "gbm"

    def __init__(self, config: dict[str, Any], *, seed: int, max_rounds: int) -> None:
        self.config, self.seed, self.max_rounds = config, seed, max_rounds

    def fit(self, ds: Dataset, x: Any, y: np.ndarray) -> GBM:
        import xgboost as xgb

        multi = ds.n_classes > 2
        t0 = time.perf_counter()
        self.est = xgb.XGBClassifier(
            n_estimators=self.max_rounds,
            learning_rate=0.1,
            max_depth=self.config["max_depth"],
            subsample=0.9,
            colsample_bytree=0.9,
            tree_method="hist",
            n_jobs=2,
            random_state=self.seed,
            early_stopping_rounds=30,
            eval_metric="mlogloss" if multi else "logloss",
        )
        self.est.fit(x, y, eval_set=[(ds.x_val, ds.y_val)], verbose=False)
        self.fit_s = time.perf_counter() - t0
        self.est.get_booster().set_param({"nthread": 1})
        self.multi = multi
        return self

    def predict(self, x: Any) -> np.ndarray:
        p = self.est.predict_proba(x)
        return np.asarray(p if self.multi else p[:, 1])

    def predict_one(self, x: Any) -> Any:
        booster = self.est.get_booster()
        return booster.inplace_predict(x, iteration_range=(0, self.est.best_iteration + 1))


class TorchNet(Model):
    """A network trained by Adam with early stopping on the validation metric (the best epoch is kept)."""

    def __init__(self, family: str, config: dict[str, Any], *, seed: int, epochs: int) -> None:
        self.family, self.config, self.seed, self.epochs = family, config, seed, epochs
        self.transform: Any = None
        self.vocab: dict[str, int] = {}

    # inputs -> tensors ------------------------------------------------------------------------------
    def _prepare(self, x: Any, texts: list[str] | None = None) -> Any:
        import torch

        if self.family == "embedding":
            assert texts is not None, "the embedding model reads the raw texts"
            return self._bags(texts)
        arr = x.toarray() if hasattr(x, "toarray") else np.asarray(x)
        if self.transform is not None:
            arr = self.transform.transform(arr)
        t = torch.as_tensor(arr, dtype=torch.float32)
        return t.view(-1, 1, 8, 8) if self.family == "cnn" else t

    def _bags(self, texts: list[str]) -> Any:
        import torch

        ids: list[int] = []
        offsets: list[int] = []
        for text in texts:
            offsets.append(len(ids))
            ids.extend(self.vocab[w] for w in self.analyzer(text) if w in self.vocab)
        return torch.as_tensor(ids, dtype=torch.long), torch.as_tensor(offsets, dtype=torch.long)

    def _module(self, ds: Dataset, n_in: int) -> Any:
        import torch
        from torch import nn

        from systems.blocks.feedforward import FeedForwardClassifier

        out = ds.n_classes if ds.n_classes > 2 else 1
        if self.family == "mlp":
            return FeedForwardClassifier(n_in, self.config["width"], out, dropout=self.config["dropout"])
        if self.family == "cnn":
            c = self.config["channels"]
            return nn.Sequential(
                nn.Conv2d(1, c, 3, padding=1),
                nn.ReLU(),  # (B, c, 8, 8)
                nn.Conv2d(c, 2 * c, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),  # (B, 2c, 4, 4)
                nn.Flatten(),
                nn.Dropout(self.config["dropout"]),
                nn.Linear(2 * c * 16, out),
            )

        class BagOfEmbeddings(nn.Module):
            """Mean of learned word vectors -> ReLU layer -> logit (fastText-like)."""

            def __init__(self, vocab: int, dim: int) -> None:
                super().__init__()
                self.emb = nn.EmbeddingBag(vocab, dim, mode="mean")
                self.head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, out))

            def forward(self, bags: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
                return self.head(self.emb(*bags))  # (B, out)

        return BagOfEmbeddings(len(self.vocab), self.config["dim"])

    def _batches(self, xt: Any, idx: Any) -> Any:
        if self.family != "embedding":
            return xt[idx]
        import torch

        ids, offsets = xt
        ends = torch.cat([offsets[1:], torch.tensor([len(ids)])])
        parts = [ids[offsets[i] : ends[i]] for i in idx.tolist()]
        lens = torch.tensor([len(p) for p in parts])
        return torch.cat(parts) if parts else ids[:0], torch.cat(
            [torch.zeros(1, dtype=torch.long), lens.cumsum(0)[:-1]]
        )

    def _n(self, xt: Any) -> int:
        return len(xt[1]) if self.family == "embedding" else len(xt)

    def fit(self, ds: Dataset, x: Any, y: np.ndarray, texts: list[str] | None = None) -> TorchNet:
        import torch
        import torch.nn.functional as F

        set_seed(self.seed)
        t0 = time.perf_counter()
        if ds.kind == "tabular":
            from sklearn.preprocessing import QuantileTransformer

            self.transform = QuantileTransformer(
                output_distribution="normal", n_quantiles=min(1000, len(y)), random_state=self.seed
            ).fit(x)
        if self.family == "embedding":
            from sklearn.feature_extraction.text import CountVectorizer

            vec = CountVectorizer(max_features=20000, min_df=2).fit(texts or ds.texts["train"])
            self.analyzer = vec.build_analyzer()
            self.vocab = {w: i for i, w in enumerate(vec.get_feature_names_out())}
        xt = self._prepare(x, texts)
        xv = self._prepare(ds.x_val, ds.texts.get("val"))
        yt = torch.as_tensor(y)
        n_in = xt.shape[1] if self.family == "mlp" else 0
        self.module = self._module(ds, n_in)
        opt = torch.optim.Adam(self.module.parameters(), lr=self.config.get("lr", 1e-3), weight_decay=1e-5)
        gen = torch.Generator().manual_seed(self.seed)
        multi = ds.n_classes > 2
        batch = 128 if self._n(xt) < 20_000 else 512
        best: tuple[float, dict[str, Any]] | None = None
        patience = 0
        for _epoch in range(self.epochs):
            self.module.train()
            perm = torch.randperm(self._n(xt), generator=gen)
            for s in range(0, len(perm), batch):
                idx = perm[s : s + batch]
                logits = self.module(self._batches(xt, idx))
                if multi:
                    loss = F.cross_entropy(logits, yt[idx])
                else:
                    loss = F.binary_cross_entropy_with_logits(logits.squeeze(1), yt[idx].float())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            val = score(ds.metric, ds.y_val, self._scores(xv, multi))
            if best is None or val > best[0]:
                best, patience = (val, copy.deepcopy(self.module.state_dict())), 0
            else:
                patience += 1
                if patience >= 4:
                    break
        assert best is not None
        self.module.load_state_dict(best[1])
        self.module.eval()
        self.multi, self.fit_s = multi, time.perf_counter() - t0
        return self

    def _scores(self, xt: Any, multi: bool) -> np.ndarray:
        import torch

        self.module.eval()
        with torch.inference_mode():
            out = self.module(xt)
            return (torch.softmax(out, 1) if multi else torch.sigmoid(out.squeeze(1))).numpy()

    def predict(self, x: Any, texts: list[str] | None = None) -> np.ndarray:
        return self._scores(self._prepare(x, texts), self.multi)

    def predict_one(self, x: Any, texts: list[str] | None = None) -> Any:
        return self.predict(x, texts)


GRIDS: dict[str, list[dict[str, Any]]] = {
    "gbm": [{"max_depth": 4}, {"max_depth": 8}],
    "mlp": [{"width": 64, "dropout": 0.0}, {"width": 256, "dropout": 0.2}],
    "cnn": [{"channels": 16, "dropout": 0.0}, {"channels": 32, "dropout": 0.3}],
    "embedding": [{"dim": 32, "lr": 3e-3}, {"dim": 128, "lr": 3e-3}],
}


def families(ds: Dataset) -> list[str]:
    return {"tabular": ["gbm", "mlp"], "image": ["gbm", "mlp", "cnn"], "text": ["gbm", "mlp", "embedding"]}[ds.kind]


def build(family: str, config: dict[str, Any], *, seed: int, quick: bool) -> Any:
    if family == "gbm":
        return GBM(config, seed=seed, max_rounds=100 if quick else 600)
    return TorchNet(family, config, seed=seed, epochs=6 if quick else 20)


def fit(
    family: str,
    config: dict[str, Any],
    ds: Dataset,
    x: Any,
    y: np.ndarray,
    *,
    seed: int,
    quick: bool,
    texts: list[str] | None = None,
) -> Any:
    model = build(family, config, seed=seed, quick=quick)
    if isinstance(model, TorchNet):
        return model.fit(ds, x, y, texts=texts)
    return model.fit(ds, x, y)


def predict(model: Any, ds: Dataset, x: Any, texts: list[str] | None = None) -> np.ndarray:
    if isinstance(model, TorchNet):
        return model.predict(x, texts)
    return model.predict(x)


# ------------------------------------------------------------------------------------------ measurements


def latency(model: Any, ds: Dataset, *, repeats: int) -> dict[str, float]:
    """Median microseconds for one row, and per row in a batch of up to 1,000 test rows (1 thread)."""
    import torch

    torch.set_num_threads(1)
    n = min(1000, ds.y_test.shape[0])
    texts = ds.texts.get("test")
    one_x = ds.x_test[:1]
    one_t = texts[:1] if texts else None
    batch_x, batch_t = ds.x_test[:n], (texts[:n] if texts else None)

    def timed(fn: Callable[[], Any], k: int) -> float:
        fn()
        times = []
        for _ in range(k):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    single = timed(lambda: predict(model, ds, one_x, one_t), repeats)
    batched = timed(lambda: predict(model, ds, batch_x, batch_t), max(3, repeats // 20))
    return {"single_row_us": single * 1e6, "batched_per_row_us": batched / n * 1e6, "batch_rows": n}


def tree_shap(model: GBM, ds: Dataset, x: np.ndarray, names: list[str], *, rows: int = 2000) -> dict[str, Any]:
    """Exact TreeSHAP (XGBoost ``pred_contribs``): mean |contribution| per feature, and the additivity check
    (contributions + bias = the margin, per row)."""
    import xgboost as xgb

    booster = model.est.get_booster()
    rng = (0, model.est.best_iteration + 1)
    dm = xgb.DMatrix(x[:rows])
    contrib = booster.predict(dm, pred_contribs=True, iteration_range=rng)  # (n, F + 1), last = bias
    margin = booster.predict(dm, output_margin=True, iteration_range=rng)  # (n,)
    mean_abs = np.abs(contrib[:, :-1]).mean(0)
    order = np.argsort(-mean_abs)
    return {
        "rows": len(contrib),
        "additivity_max_abs_error": float(np.abs(contrib.sum(1) - margin).max()),
        "top": [{"feature": names[i], "mean_abs": float(mean_abs[i])} for i in order[:8]],
        "mean_abs": {names[i]: float(mean_abs[i]) for i in range(len(names))},
    }


def _subsample(y: np.ndarray, frac: float, seed: int) -> np.ndarray:
    """Stratified row indices: ``frac`` of each class (at least 2 rows per class)."""
    rng = np.random.default_rng(seed)
    out = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        out.append(rng.choice(idx, size=max(2, round(frac * len(idx))), replace=False))
    return np.sort(np.concatenate(out))


def _rows(x: Any, idx: np.ndarray) -> Any:
    return x[idx]


def _with_noise(ds: Dataset, m: int, seed: int) -> Dataset:
    """``ds`` with ``m`` standard-normal columns appended to every split (the same draw for each run)."""
    rng = np.random.default_rng(seed + 10_000)

    def add(x: np.ndarray) -> np.ndarray:
        return np.hstack([x, rng.normal(size=(len(x), m))])

    return Dataset(
        ds.name,
        ds.kind,
        ds.metric,
        add(ds.x_train),
        ds.y_train,
        add(ds.x_val),
        ds.y_val,
        add(ds.x_test),
        ds.y_test,
        features=ds.features + [f"noise{i}" for i in range(m)],
    )


def evaluate_dataset(ds: Dataset, *, quick: bool, seed: int, progress: Progress) -> dict[str, Any]:
    """Selection on validation, test with intervals, learning curve, noise columns, timing, SHAP."""
    from systems.common.bench import bootstrap_ci

    fams = families(ds)
    out: dict[str, Any] = {
        "kind": ds.kind,
        "metric": ds.metric,
        "rows": {"train": int(ds.y_train.shape[0]), "val": int(ds.y_val.shape[0]), "test": int(ds.y_test.shape[0])},
        "features": len(ds.features),
        "models": {},
    }
    chosen: dict[str, Any] = {}
    test_scores: dict[str, np.ndarray] = {}
    for fam in fams:
        candidates = []
        for cfg in GRIDS[fam][: 1 if quick else None]:  # quick: one configuration per family
            progress(f"trees_vs_dnn: {ds.name} {fam} {cfg}")
            model = fit(fam, cfg, ds, ds.x_train, ds.y_train, seed=seed, quick=quick, texts=ds.texts.get("train"))
            val = score(ds.metric, ds.y_val, predict(model, ds, ds.x_val, ds.texts.get("val")))
            candidates.append((val, cfg, model))
        val, cfg, model = max(candidates, key=lambda c: c[0])  # chosen on validation
        chosen[fam] = model
        p = predict(model, ds, ds.x_test, ds.texts.get("test"))
        test_scores[fam] = p
        lo, hi = bootstrap_ci(lambda yy, pp: score(ds.metric, yy, pp), ds.y_test, p, n_boot=300, seed=seed)
        out["models"][fam] = {
            "config": cfg,
            "val": val,
            "val_candidates": [{"config": c, "val": v} for v, c, _ in candidates],
            "test": score(ds.metric, ds.y_test, p),
            "test_ci": [lo, hi],
            "fit_s": model.fit_s,
            **latency(model, ds, repeats=30 if quick else 200),
        }
    # the tree minus the best network (chosen on validation too), paired over test rows
    nets = [f for f in fams if f != "gbm"]
    best_net = max(nets, key=lambda f: out["models"][f]["val"])
    diff_lo, diff_hi = bootstrap_ci(
        lambda yy, a, b: score(ds.metric, yy, a) - score(ds.metric, yy, b),
        ds.y_test,
        test_scores["gbm"],
        test_scores[best_net],
        n_boot=300,
        seed=seed,
    )
    gbm_test, net_test = out["models"]["gbm"]["test"], out["models"][best_net]["test"]
    out["gbm_minus_best_net"] = {"net": best_net, "diff": gbm_test - net_test, "ci": [diff_lo, diff_hi]}
    out["winner"] = "tie (interval covers 0)" if diff_lo <= 0 <= diff_hi else "gbm" if gbm_test > net_test else best_net

    # learning curves at the chosen configurations
    fracs = [0.25, 1.0] if quick else [0.1, 0.3, 1.0]
    curve: dict[str, list[float]] = {f: [] for f in fams}
    for frac in fracs:
        idx = _subsample(ds.y_train, frac, seed)
        texts = [ds.texts["train"][i] for i in idx] if ds.texts else None
        for fam in fams:
            if frac == 1.0:
                curve[fam].append(out["models"][fam]["test"])
                continue
            progress(f"trees_vs_dnn: {ds.name} learning curve {fam} {frac:g}")
            cfg = out["models"][fam]["config"]
            model = fit(fam, cfg, ds, _rows(ds.x_train, idx), ds.y_train[idx], seed=seed, quick=quick, texts=texts)
            curve[fam].append(score(ds.metric, ds.y_test, predict(model, ds, ds.x_test, ds.texts.get("test"))))
    out["learning_curve"] = {
        "train_rows": [len(_subsample(ds.y_train, f, seed)) for f in fracs],
        "fractions": fracs,
        **curve,
    }

    if ds.kind == "tabular":
        f = len(ds.features)
        levels = [f] if quick else [f, 4 * f]
        noise: dict[str, Any] = {"added_columns": [0, *levels], **{fam: [out["models"][fam]["test"]] for fam in fams}}
        for m in levels:
            noisy = _with_noise(ds, m, seed)
            for fam in fams:
                progress(f"trees_vs_dnn: {ds.name} +{m} noise columns {fam}")
                model = fit(
                    fam, out["models"][fam]["config"], noisy, noisy.x_train, noisy.y_train, seed=seed, quick=quick
                )
                noise[fam].append(score(ds.metric, noisy.y_test, predict(model, noisy, noisy.x_test)))
                if fam == "gbm" and m == levels[-1]:
                    shap = tree_shap(model, noisy, noisy.x_test, noisy.features)
                    total = sum(shap["mean_abs"].values())
                    noise["gbm_shap_share_on_noise"] = (
                        sum(v for k, v in shap["mean_abs"].items() if k.startswith("noise")) / total
                    )
        noise["drop"] = {fam: noise[fam][0] - noise[fam][-1] for fam in fams}
        out["noise_columns"] = noise
        out["shap"] = tree_shap(chosen["gbm"], ds, np.asarray(ds.x_test), ds.features)
        del out["shap"]["mean_abs"]
    return out


def run(*, quick: bool = False, seed: int = 0, progress: Progress) -> dict[str, Any]:
    set_seed(seed)
    results: dict[str, Any] = {}
    for name in LOADERS:
        progress(f"trees_vs_dnn: loading {name}")
        ds = LOADERS[name](quick, seed)
        results[name] = evaluate_dataset(ds, quick=quick, seed=seed, progress=progress)
        set_seed(seed)
    tab = [n for n, r in results.items() if r["kind"] == "tabular"]
    uns = [n for n, r in results.items() if r["kind"] != "tabular"]
    return {
        "question": "When would you choose a tree-based model over a deep network, and vice versa?",
        "datasets": results,
        "winners": {n: results[n]["winner"] for n in results},
        "summary": {
            "tabular_gbm_wins": sum(results[n]["winner"] == "gbm" for n in tab),
            "tabular_datasets": len(tab),
            "unstructured_net_wins": sum(
                results[n]["winner"] not in ("gbm",) and "tie" not in results[n]["winner"] for n in uns
            ),
            "unstructured_datasets": len(uns),
        },
        "grinsztajn_2022": GRINSZTAJN_2022,
    }


def plot(result: dict[str, Any], png: Path) -> None:
    """Row 1: learning curves per dataset. Row 2: noise columns (tabular), fit time and latency, SHAP."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = result["datasets"]
    names = list(data)
    fig, axes = plt.subplots(2, len(names), figsize=(4.6 * len(names), 8.5))
    colours = {"gbm": "C0", "mlp": "C1", "cnn": "C2", "embedding": "C2"}
    for ax, name in zip(axes[0], names, strict=True):
        lc = data[name]["learning_curve"]
        for fam, m in data[name]["models"].items():
            ax.plot(lc["train_rows"], lc[fam], "o-", color=colours[fam], label=f"{fam} (test {m['test']:.3f})")
        ax.set(
            xscale="log",
            xlabel="training rows",
            ylabel=f"test {data[name]['metric']}",
            title=f"{name} ({data[name]['kind']}): winner {data[name]['winner']}",
        )
        ax.legend(fontsize=8)
    ax_noise, ax_time, ax_lat, ax_shap = axes[1][0], axes[1][1], axes[1][2], axes[1][3]
    for name in names:
        noise = data[name].get("noise_columns")
        if not noise:
            continue
        for fam in ("gbm", "mlp"):
            ax_noise.plot(
                noise["added_columns"],
                noise[fam],
                "o-" if fam == "gbm" else "s--",
                color=colours[fam],
                label=f"{name} {fam}",
                alpha=1.0 if name == "fraud" else 0.55,
            )
    ax_noise.set(
        xlabel="added Gaussian noise columns",
        ylabel="test metric (fraud AP, reviews AUC)",
        title="robustness to uninformative features",
    )
    ax_noise.legend(fontsize=7)
    labels, fits, singles, batched = [], [], [], []
    for name in names:
        for fam, m in data[name]["models"].items():
            labels.append(f"{name}\n{fam}")
            fits.append(m["fit_s"])
            singles.append(m["single_row_us"])
            batched.append(m["batched_per_row_us"])
    pos = np.arange(len(labels))
    ax_time.bar(pos, fits, color=[colours[lab.split("\n")[1]] for lab in labels])
    ax_time.set_xticks(pos, labels, fontsize=6)
    ax_time.set(yscale="log", ylabel="seconds", title="training time (chosen configuration)")
    ax_lat.bar(pos - 0.2, singles, 0.4, label="one row")
    ax_lat.bar(pos + 0.2, batched, 0.4, label="per row in a batch")
    ax_lat.set_xticks(pos, labels, fontsize=6)
    ax_lat.set(yscale="log", ylabel="microseconds", title="inference latency (1 thread)")
    ax_lat.legend(fontsize=8)
    shap = data["fraud"]["shap"]["top"]
    ax_shap.barh([s["feature"] for s in shap][::-1], [s["mean_abs"] for s in shap][::-1], color="C0")
    ax_shap.set(xlabel="mean |SHAP| (log-odds)", title="fraud: exact TreeSHAP, top features")
    ax_shap.tick_params(axis="y", labelsize=7)
    fig.suptitle(f"trees vs deep networks ({result['form']} form)")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
