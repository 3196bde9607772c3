"""The bias–variance trade-off, measured: a bootstrap decomposition of squared error across model complexity.

    mlsd modeling bias_variance [--quick] --out .mlsd/modeling/bias_variance.json   # JSON + PNG

The question
------------
    "Explain the bias–variance trade-off … how does it influence model selection and hyper-parameter tuning?"

What the interviewer tests
--------------------------
* That expected test error splits into bias² (the average model is wrong), variance (the model changes with
  the training sample) and irreducible noise, and that complexity moves error from the first to the second:
  the U-shaped test error, whose bottom is what model selection (on validation / cross-validation) looks for.
* That regularisation is a complexity knob (a ridge penalty walks a model back along the U), that averaging
  many high-variance models (bagging, random forests) cuts variance at almost no cost in bias, while boosting
  stacks weak, biased models and cuts bias.
* Awareness of where the classical picture ends: over-parameterised models that interpolate the training data
  can see test error fall again past the interpolation threshold ("double descent", Belkin et al. 2019).

Approach
--------
The real diabetes regression data bundled with scikit-learn (442 patients, 10 features, disease progression
after a year; offline). A fixed 25 % test set; ``B`` bootstrap resamples of the remaining pool are each fit,
and for every test point the ``B`` predictions give the decomposition, exactly:

    mean_b (y - f_b(x))^2  =  (y - mean_b f_b(x))^2  +  var_b f_b(x)
           error            =      bias^2 + noise      +   variance

On real data the noise cannot be separated from bias² without repeated measurements at the same ``x``, so
the first term is reported as *bias² + noise* (its trend across a sweep is the trend of bias², the noise
being fixed), with the noise level estimated by a nearest-neighbour difference estimator (half the mean
squared difference of targets of nearest neighbours: an upper bound, since neighbours are not identical).
Targets are standardised, so errors are in units of the target's variance (predicting the mean scores ~1).

Sweeps: tree depth, k of kNN, polynomial degree, a ridge penalty on degree-3 features, bagging (number of
full-depth trees) and boosting (number of depth-2 stages); cross-validation on the pool picks the depth and k,
and the test error there is set against the sweep's minimum. Then an MLP width sweep (the one-hidden-layer
``FeedForwardClassifier`` block with one output, trained unregularised to near-zero training error) and the
same sweep with the hidden layer frozen at random (random ReLU features, minimum-norm least squares), to see
whether double descent appears at this scale.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from systems.modeling.experiment import Progress, set_seed

__all__ = ["decompose", "double_descent", "load_regression", "plot", "run"]

Fit = Callable[[np.ndarray, np.ndarray, int], Callable[[np.ndarray], np.ndarray]]


def load_regression(seed: int = 0, test_fraction: float = 0.25) -> dict[str, np.ndarray]:
    """Diabetes: a fixed test split; features and target standardised on the pool (never on test)."""
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split

    x, y = load_diabetes(return_X_y=True)
    x_pool, x_test, y_pool, y_test = train_test_split(x, y, test_size=test_fraction, random_state=seed)
    mx, sx = x_pool.mean(0), x_pool.std(0)
    my, sy = y_pool.mean(), y_pool.std()
    return {
        "x_pool": (x_pool - mx) / sx,
        "y_pool": (y_pool - my) / sy,
        "x_test": (x_test - mx) / sx,
        "y_test": (y_test - my) / sy,
    }


def decompose(preds: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """``preds`` (B, n) of B fitted models on n test points -> error = bias² + noise + variance (exact)."""
    mean = preds.mean(axis=0)  # (n,) the average model
    return {
        "error": float(np.mean((preds - y[None, :]) ** 2)),
        "bias2_noise": float(np.mean((y - mean) ** 2)),
        "variance": float(np.mean(preds.var(axis=0))),
    }


def noise_estimate(x: np.ndarray, y: np.ndarray) -> float:
    """Half the mean squared target difference between nearest neighbours (an upper bound on the noise)."""
    from sklearn.neighbors import NearestNeighbors

    _, idx = NearestNeighbors(n_neighbors=2).fit(x).kneighbors(x)
    return float(np.mean((y - y[idx[:, 1]]) ** 2) / 2)


def _bootstraps(n: int, b: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n, n) for _ in range(b)]


def sweep(
    data: dict[str, np.ndarray], boots: Sequence[np.ndarray], params: Sequence[Any], make: Callable[[Any, int], Any]
) -> list[dict[str, Any]]:
    """Decomposition for each ``param``: ``make(param, seed)`` is a fresh scikit-learn regressor."""
    rows = []
    for p in params:
        preds = np.stack(
            [
                make(p, i).fit(data["x_pool"][idx], data["y_pool"][idx]).predict(data["x_test"])
                for i, idx in enumerate(boots)
            ]
        )
        rows.append({"param": p, **decompose(preds, data["y_test"])})
    return rows


def staged_sweep(
    data: dict[str, np.ndarray],
    boots: Sequence[np.ndarray],
    sizes: Sequence[int],
    staged: Callable[[np.ndarray, np.ndarray, int], list[np.ndarray]],
) -> list[dict[str, Any]]:
    """Decomposition per ensemble size, from one fit per bootstrap: ``staged`` returns test predictions after
    each size (bagging: running means of the trees; boosting: ``staged_predict``)."""
    per_size: list[list[np.ndarray]] = [[] for _ in sizes]
    for i, idx in enumerate(boots):
        for j, pred in enumerate(staged(data["x_pool"][idx], data["y_pool"][idx], i)):
            per_size[j].append(pred)
    return [{"param": s, **decompose(np.stack(p), data["y_test"])} for s, p in zip(sizes, per_size, strict=True)]


def cv_choice(data: dict[str, np.ndarray], params: Sequence[Any], make: Callable[[Any, int], Any], seed: int) -> Any:
    """The parameter with the lowest 5-fold cross-validated MSE on the pool (the test set is not read)."""
    from sklearn.model_selection import KFold, cross_val_score

    folds = KFold(5, shuffle=True, random_state=seed)
    scores = [
        -cross_val_score(
            make(p, seed), data["x_pool"], data["y_pool"], cv=folds, scoring="neg_mean_squared_error"
        ).mean()
        for p in params
    ]
    return params[int(np.argmin(scores))]


def _mlp_width(
    data: dict[str, np.ndarray], boots: Sequence[np.ndarray], widths: Sequence[int], *, steps: int, seed: int
) -> list[dict[str, Any]]:
    """Unregularised one-hidden-layer MLPs trained full-batch (Adam) towards zero training error."""
    import torch

    from systems.blocks.feedforward import FeedForwardClassifier

    rows = []
    x_test = torch.as_tensor(data["x_test"], dtype=torch.float32)
    for w in widths:
        preds, train_mse = [], []
        for i, idx in enumerate(boots):
            set_seed(seed + i)
            x = torch.as_tensor(data["x_pool"][idx], dtype=torch.float32)  # (n, 10)
            y = torch.as_tensor(data["y_pool"][idx], dtype=torch.float32)  # (n,)
            net = FeedForwardClassifier(x.shape[1], w, 1)  # one output: a regressor
            opt = torch.optim.Adam(net.parameters(), lr=3e-3)
            for _ in range(steps):
                loss = torch.mean((net(x).squeeze(1) - y) ** 2)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            with torch.inference_mode():
                train_mse.append(float(torch.mean((net(x).squeeze(1) - y) ** 2)))
                preds.append(net(x_test).squeeze(1).numpy().astype(np.float64))
        n_params = (data["x_pool"].shape[1] + 2) * w + 1
        rows.append(
            {
                "param": w,
                "params": n_params,
                "train_mse": float(np.mean(train_mse)),
                **decompose(np.stack(preds), data["y_test"]),
            }
        )
    return rows


def _random_features(
    data: dict[str, np.ndarray], boots: Sequence[np.ndarray], widths: Sequence[int], *, seed: int
) -> list[dict[str, Any]]:
    """The same network with its hidden layer frozen at random: ReLU(x W) then minimum-norm least squares."""
    rng = np.random.default_rng(seed)
    d = data["x_pool"].shape[1]
    rows = []
    for p in widths:
        w = rng.normal(size=(d, p)) / np.sqrt(d)  # (d, p), fixed per width: only the sample varies
        preds, train_mse = [], []
        for idx in boots:
            phi = np.maximum(data["x_pool"][idx] @ w, 0)  # (n, p)
            beta = np.linalg.lstsq(phi, data["y_pool"][idx], rcond=None)[0]  # min-norm when p > rank
            train_mse.append(float(np.mean((phi @ beta - data["y_pool"][idx]) ** 2)))
            preds.append(np.maximum(data["x_test"] @ w, 0) @ beta)
        rows.append({"param": p, "train_mse": float(np.mean(train_mse)), **decompose(np.stack(preds), data["y_test"])})
    return rows


def double_descent(rows: Sequence[dict[str, Any]], *, factor: float = 1.1) -> dict[str, Any]:
    """Is there a rise then a fall of test error along the sweep (a peak at least ``factor`` above the best
    error before it and ``factor`` above the best after it)? Returns the answer and where the peak is."""
    err = [r["error"] for r in rows]
    if len(err) >= 3:
        j = 1 + int(np.argmax(err[1:-1]))  # the highest interior point
        before, after = min(err[:j]), min(err[j + 1 :])
        if err[j] > factor * before and err[j] > factor * after:
            return {
                "appears": True,
                "peak_at": rows[j]["param"],
                "peak_error": err[j],
                "before": before,
                "after": after,
            }
    return {"appears": False, "peak_at": None, "peak_error": None, "before": None, "after": None}


def run(*, quick: bool = False, seed: int = 0, progress: Progress) -> dict[str, Any]:
    """Every sweep on the same bootstrap resamples and test points."""
    from sklearn.ensemble import BaggingRegressor, GradientBoostingRegressor
    from sklearn.linear_model import LinearRegression, Ridge
    from sklearn.neighbors import KNeighborsRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import PolynomialFeatures, StandardScaler
    from sklearn.tree import DecisionTreeRegressor

    set_seed(seed)
    data = load_regression(seed)
    n_pool = len(data["y_pool"])
    boots = _bootstraps(n_pool, 10 if quick else 60, seed)
    mlp_boots = boots[: 3 if quick else 8]
    unique = float(np.mean([len(np.unique(b)) for b in boots]))
    depths = [1, 2, 3, 4, 5, 6, 8, 10, 14] if not quick else [1, 2, 3, 4, 6, 10]
    ks = [1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144] if not quick else [1, 3, 8, 21, 55, 144]
    degrees = [1, 2, 3]  # degree 3 already has 285 features for ~210 distinct rows: past interpolation
    alphas = [1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 1e3, 1e4] if not quick else [1e-2, 1.0, 100.0, 1e4]
    bag_sizes = [1, 2, 3, 5, 10, 20, 50, 100] if not quick else [1, 2, 5, 20]
    boost_sizes = [1, 2, 5, 10, 20, 50, 100, 200, 500] if not quick else [1, 5, 20, 100, 200]
    widths = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024] if not quick else [2, 8, 32, 128, 512]
    rf_widths = [5, 10, 20, 50, 100, 150, 180, 200, 210, 220, 240, 280, 350, 500, 1000, 2000, 5000]
    if quick:
        rf_widths = [10, 50, 150, 210, 280, 1000]

    def tree(d: int, s: int) -> Any:
        return DecisionTreeRegressor(max_depth=d, random_state=s)

    def knn(k: int, _s: int) -> Any:
        return KNeighborsRegressor(n_neighbors=k)

    def poly(deg: int, _s: int) -> Any:  # plain least squares (minimum-norm once features outnumber rows)
        return make_pipeline(PolynomialFeatures(deg, include_bias=False), StandardScaler(), LinearRegression())

    def ridge(alpha: float, _s: int) -> Any:
        return make_pipeline(PolynomialFeatures(3, include_bias=False), StandardScaler(), Ridge(alpha=alpha))

    def bagging(x: np.ndarray, y: np.ndarray, s: int) -> list[np.ndarray]:
        bag = BaggingRegressor(DecisionTreeRegressor(), n_estimators=max(bag_sizes), random_state=s).fit(x, y)
        each = np.stack([t.predict(data["x_test"]) for t in bag.estimators_])  # (T, n_test)
        running = np.cumsum(each, axis=0) / np.arange(1, len(each) + 1)[:, None]
        return [running[n - 1] for n in bag_sizes]

    def boosting(x: np.ndarray, y: np.ndarray, s: int) -> list[np.ndarray]:
        gb = GradientBoostingRegressor(n_estimators=max(boost_sizes), max_depth=2, learning_rate=0.1, random_state=s)
        stages = list(gb.fit(x, y).staged_predict(data["x_test"]))
        return [stages[n - 1] for n in boost_sizes]

    sweeps: dict[str, list[dict[str, Any]]] = {}
    progress("bias_variance: tree depth")
    sweeps["tree_depth"] = sweep(data, boots, depths, tree)
    progress("bias_variance: kNN")
    sweeps["knn_k"] = sweep(data, boots, ks, knn)
    progress("bias_variance: polynomial degree")
    sweeps["poly_degree"] = sweep(data, boots, degrees, poly)
    progress("bias_variance: ridge on degree-3 features")
    sweeps["ridge_alpha"] = sweep(data, boots, alphas, ridge)
    progress("bias_variance: bagging")
    sweeps["bagging_trees"] = staged_sweep(data, boots, bag_sizes, bagging)
    progress("bias_variance: boosting")
    sweeps["boosting_stages"] = staged_sweep(data, boots, boost_sizes, boosting)
    progress("bias_variance: MLP width")
    sweeps["mlp_width"] = _mlp_width(data, mlp_boots, widths, steps=400 if quick else 3000, seed=seed)
    progress("bias_variance: random-feature width")
    sweeps["random_features"] = _random_features(data, boots[:20], rf_widths, seed=seed)

    def at(name: str, param: Any) -> dict[str, Any]:
        return next(r for r in sweeps[name] if r["param"] == param)

    def best(name: str) -> dict[str, Any]:
        return min(sweeps[name], key=lambda r: r["error"])

    selection = {}
    for name, params, make in (("tree_depth", depths, tree), ("knn_k", ks, knn), ("ridge_alpha", alphas, ridge)):
        chosen = cv_choice(data, params, make, seed)
        selection[name] = {
            "cv_choice": chosen,
            "error_at_cv_choice": at(name, chosen)["error"],
            "test_best_param_not_used_for_selection": best(name)["param"],
            "test_best_error_not_used_for_selection": best(name)["error"],
        }

    def ratio(name: str, key: str, hi: Any, lo: Any) -> float:
        return at(name, hi)[key] / max(at(name, lo)[key], 1e-12)

    dd_mlp, dd_rf = double_descent(sweeps["mlp_width"]), double_descent(sweeps["random_features"])
    trends = {
        "tree_variance_ratio_deep_vs_stump": ratio("tree_depth", "variance", depths[-1], depths[0]),
        "tree_bias_ratio_deep_vs_stump": ratio("tree_depth", "bias2_noise", depths[-1], depths[0]),
        "knn_variance_ratio_k1_vs_kmax": ratio("knn_k", "variance", ks[0], ks[-1]),
        "ridge_variance_ratio_weak_vs_strong": ratio("ridge_alpha", "variance", alphas[0], alphas[-1]),
        "ridge_bias_ratio_strong_vs_weak": ratio("ridge_alpha", "bias2_noise", alphas[-1], alphas[0]),
        "bagging_variance_ratio_many_vs_one": ratio("bagging_trees", "variance", bag_sizes[-1], 1),
        "bagging_bias_ratio_many_vs_one": ratio("bagging_trees", "bias2_noise", bag_sizes[-1], 1),
        "boosting_bias_ratio_many_vs_one": ratio("boosting_stages", "bias2_noise", boost_sizes[-1], 1),
        "boosting_variance_ratio_many_vs_one": ratio("boosting_stages", "variance", boost_sizes[-1], 1),
    }
    return {
        "question": "Explain the bias-variance trade-off ... how does it influence model selection and "
        "hyper-parameter tuning?",
        "data": {
            "dataset": "scikit-learn diabetes (442 x 10, regression)",
            "pool": n_pool,
            "test": len(data["y_test"]),
            "bootstraps": len(boots),
            "mlp_bootstraps": len(mlp_boots),
            "random_feature_bootstraps": min(len(boots), 20),
            "mean_unique_rows_per_bootstrap": unique,
            "target": "standardised on the pool: errors in units of its variance",
        },
        "noise_nn_estimate": noise_estimate(data["x_pool"], data["y_pool"]),
        "sweeps": sweeps,
        "selection": selection,
        "trends": trends,
        "double_descent": {
            "mlp_width": dd_mlp,
            "random_features": dd_rf,
            "interpolation_threshold_rows": unique,
            "mlp_train_mse_widest": sweeps["mlp_width"][-1]["train_mse"],
        },
        "best": {name: {"param": best(name)["param"], "error": best(name)["error"]} for name in sweeps},
    }


_TITLES = {
    "tree_depth": ("decision tree: max depth", False),
    "knn_k": ("kNN: k (complexity falls as k grows)", True),
    "poly_degree": ("least squares: polynomial degree", False),
    "ridge_alpha": ("ridge on degree-3 features: alpha", True),
    "bagging_trees": ("bagging full-depth trees: trees", True),
    "boosting_stages": ("gradient boosting (depth 2): stages", True),
    "mlp_width": ("MLP, trained to fit: hidden width", True),
    "random_features": ("random ReLU features + min-norm LS: width", True),
}


def plot(result: dict[str, Any], png: Path) -> None:
    """One panel per sweep: test error, bias² + noise and variance, with the noise estimate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(18, 8.5))
    noise = result["noise_nn_estimate"]
    for ax, (name, (title, logx)) in zip(axes.flat, _TITLES.items(), strict=True):
        rows = result["sweeps"][name]
        xs = [r["param"] for r in rows]
        ax.plot(xs, [r["error"] for r in rows], "o-", color="k", label="test error")
        ax.plot(xs, [r["bias2_noise"] for r in rows], "s--", color="C0", label="bias² + noise")
        ax.plot(xs, [r["variance"] for r in rows], "^--", color="C3", label="variance")
        if "train_mse" in rows[0]:
            ax.plot(xs, [r["train_mse"] for r in rows], ":", color="grey", label="train error")
        ax.axhline(noise, color="C2", lw=0.8, label="noise (NN estimate, upper bound)")
        if name == "random_features":
            ax.axvline(
                result["data"]["mean_unique_rows_per_bootstrap"],
                color="grey",
                ls="--",
                lw=0.8,
                label="width = unique training rows",
            )
        sel = result["selection"].get(name)
        if sel:
            ax.axvline(sel["cv_choice"], color="C1", lw=1.2, label=f"5-fold CV choice ({sel['cv_choice']:g})")
        ax.set_xscale("log" if logx else "linear")
        top = max(r["error"] for r in rows)
        ax.set_ylim(0, min(top * 1.05, 3.0))
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("MSE (target variance = 1)")
        ax.legend(fontsize=6)
    fig.suptitle(
        f"bias-variance on diabetes: {result['data']['bootstraps']} bootstrap fits per point, "
        f"{result['data']['test']} test patients ({result['form']} form)"
    )
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
