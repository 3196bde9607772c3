"""Drift bench: our summaries + ``detect_drift`` against Evidently 0.7's ``DataDriftPreset``, same data.

    python -m systems.monitoring.bench --rows 1000000          (prints the result as JSON)

Each side runs in its own fresh subprocess that generates the same seeded frames
(:func:`~systems.monitoring.synthetic.make_drift_frames`, ``rows`` reference and ``rows`` current rows),
so peak RSS (``ru_maxrss``) is that side's alone and neither inherits the other's heap. Imports (scipy for
us, ~5 s of Evidently) are paid before the clock starts and reported apart: a monitoring service imports
once and then runs many windows. The two run one after the other, never together, on a shared machine;
the load average is recorded with the result.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from systems.monitoring.drift import (
    CategoricalSpec,
    CategoricalSummary,
    NumericalSummary,
    chi_squared_p,
    detect_drift,
    fit_categorical,
    fit_numerical,
    fit_schema,
    jensen_shannon,
    ks_binned,
    wasserstein_normed,
)
from systems.monitoring.synthetic import DriftFrames, make_drift_frames

EVIDENTLY_METHOD = {"Wasserstein distance (normed)": "wasserstein", "Jensen-Shannon distance": "jensenshannon"}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


@contextlib.contextmanager
def _stage(timings: dict[str, float], name: str) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - t0, 4)


def run_ours(frames: DriftFrames) -> dict[str, Any]:
    """Fit the layout on the reference, summarise both frames, detect: per-column verdicts and timings."""
    timings: dict[str, float] = {}
    with _stage(timings, "fit_schema"):
        schema = fit_schema(frames.reference, numerical=frames.numerical, categorical=frames.categorical)
    with _stage(timings, "summarize_reference"):
        ref = schema.summarize(frames.reference)
    with _stage(timings, "summarize_current"):
        cur = schema.summarize(frames.current)
    with _stage(timings, "detect_drift"):
        report = detect_drift(ref, cur)
    columns = {c.column: {"method": c.method, "statistic": c.statistic, "drifted": c.drifted} for c in report.columns}
    return {
        "seconds": round(sum(timings.values()), 3),
        "timings": timings,
        "columns": columns,
        "share_of_drifted_columns": report.share_of_drifted_columns,
        "dataset_drift": report.dataset_drift,
    }


def run_evidently(frames: DriftFrames, html: Path | None = None) -> dict[str, Any]:
    """Evidently 0.7 ``Report([DataDriftPreset()], include_tests=True)``: per-column values and test status
    (and its HTML report written to ``html``)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    timings: dict[str, float] = {}
    definition = DataDefinition(numerical_columns=frames.numerical, categorical_columns=frames.categorical)
    with _stage(timings, "run"):
        current = Dataset.from_pandas(frames.current, data_definition=definition)
        reference = Dataset.from_pandas(frames.reference, data_definition=definition)
        snapshot = Report([DataDriftPreset()], include_tests=True).run(current, reference)  # current first
    with _stage(timings, "snapshot_dict"):
        doc = snapshot.dict()
    if html is not None:
        html.parent.mkdir(parents=True, exist_ok=True)
        snapshot.save_html(str(html))
    return {"seconds": round(sum(timings.values()), 3), "timings": timings, **parse_evidently(doc)}


def parse_evidently(doc: dict[str, Any]) -> dict[str, Any]:
    """Per-column ``{method, statistic, drifted}`` and the drifted share from an Evidently snapshot dict."""
    columns: dict[str, dict[str, Any]] = {}
    share = None
    for m in doc["metrics"]:
        params = m["config"]
        if params.get("type") == "evidently:metric_v2:ValueDrift":
            columns[params["column"]] = {
                "method": EVIDENTLY_METHOD.get(params.get("method"), params.get("method")),
                "statistic": float(m["value"]),
            }
        elif params.get("type") == "evidently:metric_v2:DriftedColumnsCount":
            share = float(m["value"]["share"])
    dataset_drift = None
    for t in doc["tests"]:
        params = t["metric_config"]["params"]
        if params.get("type") == "evidently:metric_v2:ValueDrift":
            columns[params["column"]]["drifted"] = t["status"] == "FAIL"
        elif params.get("type") == "evidently:metric_v2:DriftedColumnsCount":
            dataset_drift = t["status"] == "FAIL"
    return {"columns": columns, "share_of_drifted_columns": share, "dataset_drift": dataset_drift}


def compare(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    """Agreement of the two verdicts, and the largest statistic difference per method."""
    names = sorted(ours["columns"])
    agree = [ours["columns"][c]["drifted"] == theirs["columns"][c]["drifted"] for c in names]
    diffs: dict[str, float] = {}
    for c in names:
        a, b = ours["columns"][c], theirs["columns"][c]
        if a["method"] == b["method"] and a["statistic"] is not None:
            diffs[a["method"]] = max(diffs.get(a["method"], 0.0), abs(a["statistic"] - b["statistic"]))
    return {
        "agreement": sum(agree) / len(agree),
        "disagreeing_columns": [c for c, ok in zip(names, agree, strict=True) if not ok],
        "max_abs_statistic_diff": diffs,
        "same_methods": all(ours["columns"][c]["method"] == theirs["columns"][c]["method"] for c in names),
    }


def _child(which: str, rows: int, numeric: int, categorical: int, seed: int) -> dict[str, Any]:
    """One side of the bench, in a fresh process: imports, data, run, peak RSS.

    ``peak_rss_over_data_mb`` is how far the run raised the process's high-water mark above the one left
    by generating the data (0 when the run never needed more than data generation's temporaries did).
    """
    t0 = time.perf_counter()
    if which == "evidently":
        import evidently.presets  # noqa: F401  (~5 s: paid before the clock starts)
    else:
        import scipy.spatial.distance
        import scipy.stats  # noqa: F401
    import_s = time.perf_counter() - t0
    frames = make_drift_frames(rows, numeric=numeric, categorical=categorical, seed=seed)
    data_peak = _peak_rss_mb()
    result = run_evidently(frames) if which == "evidently" else run_ours(frames)
    peak = _peak_rss_mb()
    return {
        **result,
        "import_s": round(import_s, 2),
        "peak_rss_mb": round(peak, 1),
        "peak_rss_after_data_mb": round(data_peak, 1),
        "peak_rss_over_data_mb": round(peak - data_peak, 1),
        "shifted": frames.shifted,
    }


def _run_child(which: str, rows: int, numeric: int, categorical: int, seed: int, timeout_s: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "systems.monitoring.bench", "--child", which, "--rows", str(rows)]
    cmd += ["--numeric", str(numeric), "--categorical", str(categorical), "--seed", str(seed)]
    env = {**os.environ, "DO_NOT_TRACK": "1"}  # Evidently's telemetry switch
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"bench child {which!r} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def bench_drift(
    rows: int = 1_000_000,
    numeric: int = 20,
    categorical: int = 5,
    seed: int = 0,
    *,
    timeout_s: float = 3600.0,
) -> dict[str, Any]:
    """Time and size both sides on ``rows`` reference + ``rows`` current rows; return the comparison.

    Keys: ``rows``, ``ours_s``, ``evidently_s``, ``speedup``, ``agreement`` (fraction of columns on which
    both flag or both pass), ``ours_peak_mb``, ``evidently_peak_mb``, plus phase timings, import costs,
    the largest statistic difference per method, and the load average before and after.
    """
    load_before = os.getloadavg()
    ours = _run_child("ours", rows, numeric, categorical, seed, timeout_s)
    theirs = _run_child("evidently", rows, numeric, categorical, seed, timeout_s)
    load_after = os.getloadavg()
    cmp = compare(ours, theirs)
    return {
        "rows": rows,
        "columns": {"numeric": numeric, "categorical": categorical},
        "seed": seed,
        "ours_s": ours["seconds"],
        "evidently_s": theirs["seconds"],
        "speedup": round(theirs["seconds"] / ours["seconds"], 1),
        "agreement": cmp["agreement"],
        "ours_peak_mb": ours["peak_rss_mb"],
        "evidently_peak_mb": theirs["peak_rss_mb"],
        "ours_peak_over_data_mb": ours["peak_rss_over_data_mb"],
        "evidently_peak_over_data_mb": theirs["peak_rss_over_data_mb"],
        "ours_timings": ours["timings"],
        "evidently_timings": theirs["timings"],
        "ours_import_s": ours["import_s"],
        "evidently_import_s": theirs["import_s"],
        "disagreeing_columns": cmp["disagreeing_columns"],
        "max_abs_statistic_diff": cmp["max_abs_statistic_diff"],
        "same_methods": cmp["same_methods"],
        "dataset_drift": {"ours": ours["dataset_drift"], "evidently": theirs["dataset_drift"]},
        "share_of_drifted_columns": {
            "ours": ours["share_of_drifted_columns"],
            "evidently": theirs["share_of_drifted_columns"],
        },
        "designed_shifted": ours["shifted"],
        "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in load_after],
    }


def sample_size_sensitivity(
    sizes: Sequence[int] = (1_000, 10_000, 100_000, 1_000_000),
    *,
    shift: float = 0.02,
    null_repeats: int = 20,
    seed: int = 0,
) -> list[dict[str, float]]:
    """The same tiny change measured at growing window sizes: p-values collapse, distances do not.

    Numerical: N(0, 1) reference vs N(``shift``, 1) current (a 0.02 σ mean shift: no model notices it).
    Categorical: shares (50, 30, 20) % vs (49, 31, 20) %. Both sides have ``n`` rows. The distances' own
    noise floor is measured too: the 95th percentile of the normed Wasserstein distance between two
    samples of the *same* distribution over ``null_repeats`` draws (what a 0.1 threshold is up against on
    small windows).
    """
    rng = np.random.default_rng(seed)
    labels = np.array(["a", "b", "c"], dtype=object)
    out: list[dict[str, float]] = []
    for n in sizes:
        ref_x, cur_x = rng.normal(0.0, 1.0, n), rng.normal(shift, 1.0, n)
        num = fit_numerical("x", ref_x)
        rx, cx = NumericalSummary.build(num, ref_x), NumericalSummary.build(num, cur_x)
        ref_c = labels[rng.choice(3, n, p=[0.5, 0.3, 0.2])]
        cur_c = labels[rng.choice(3, n, p=[0.49, 0.31, 0.2])]
        cat: CategoricalSpec = fit_categorical("c", ref_c)
        rc, cc = CategoricalSummary.build(cat, ref_c), CategoricalSummary.build(cat, cur_c)
        _, ks_p = ks_binned(rx, cx)
        null_w = [
            wasserstein_normed(rx, NumericalSummary.build(num, rng.normal(0.0, 1.0, n))) for _ in range(null_repeats)
        ]
        out.append(
            {
                "n": float(n),
                "ks_p_value": ks_p,
                "wasserstein_normed": wasserstein_normed(rx, cx),
                "chisquare_p_value": chi_squared_p(rc.counts, cc.counts),
                "jensenshannon": jensen_shannon(rc.counts, cc.counts),
                "null_wasserstein_p95": float(np.quantile(null_w, 0.95)) if null_w else math.nan,
            }
        )
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--numeric", type=int, default=20)
    parser.add_argument("--categorical", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", choices=["ours", "evidently"], help=argparse.SUPPRESS)
    parser.add_argument("--sensitivity", action="store_true", help="print the sample-size table instead")
    args = parser.parse_args(argv)
    if args.child:
        result = _child(args.child, args.rows, args.numeric, args.categorical, args.seed)
    elif args.sensitivity:
        result = {"sample_size_sensitivity": sample_size_sensitivity()}
    else:
        result = bench_drift(args.rows, args.numeric, args.categorical, args.seed)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()


def plot_report(data: dict[str, Any], png: Path) -> None:
    """Top: seconds and peak memory, ours vs Evidently; p-values collapse with window size, distances do not.
    Bottom: detection delay and false alarms per injected scenario, ours vs the p-value peer; the loop's realised
    AP per simulated day and model version against the alert bound."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.4))
    (ax_t, ax_s), (ax_c, ax_l) = axes
    drift = data.get("drift")
    if drift:
        names = ["ours", "Evidently"]
        secs = [drift["ours_s"], drift["evidently_s"]]
        bars = ax_t.bar(names, secs, color=["tab:blue", "tab:gray"])
        for b, mb in zip(bars, [drift["ours_peak_mb"], drift["evidently_peak_mb"]], strict=True):
            ax_t.annotate(f"{b.get_height():.1f} s\n{mb:,.0f} MB peak", (b.get_x() + b.get_width() / 2, b.get_height()),
                          ha="center", va="bottom", fontsize=8)  # fmt: skip
        ax_t.set(yscale="log", ylabel="seconds (log)", title=f"drift on {drift['rows']:,} rows × 25 columns")
    sens = (data.get("sensitivity") or {}).get("table")
    if sens:
        n = [r["n"] for r in sens]
        ax_s.plot(n, [r["ks_p_value"] for r in sens], "o-", label="KS p-value")
        ax_s.plot(n, [r["chisquare_p_value"] for r in sens], "s-", label="chi-squared p-value")
        ax_s.plot(n, [r["wasserstein_normed"] for r in sens], "o--", label="normed Wasserstein")
        ax_s.plot(n, [r["jensenshannon"] for r in sens], "s--", label="Jensen-Shannon")
        ax_s.plot(n, [r["null_wasserstein_p95"] for r in sens], ":", color="grey", label="Wasserstein noise p95")
        ax_s.axhline(0.05, color="tab:red", lw=0.8)
        ax_s.axhline(0.1, color="tab:purple", lw=0.8)
        ax_s.set(xscale="log", yscale="log", xlabel="rows per side", title="a 0.02 σ shift, growing windows")
        ax_s.legend(fontsize=7)
    scen = {k: v for k, v in (data.get("scenarios") or {}).items() if isinstance(v, dict) and "expected_cause" in v}
    if scen:
        scenario_names = list(scen)
        x = np.arange(len(scenario_names))
        ours = [scen[n]["detection_delay_s"] or 0 for n in scenario_names]
        peer = [scen[n]["pvalue_peer"]["detection_delay_s"] or 0 for n in scenario_names]
        ax_c.bar(x - 0.2, ours, 0.4, label="ours", color="tab:blue")
        ax_c.bar(x + 0.2, peer, 0.4, label="KS/chi² p < 0.05", color="tab:gray")
        for i, n in enumerate(scenario_names):
            far, pfar = scen[n]["false_alarm_rate"], scen[n]["pvalue_peer"]["false_alarm_rate"]
            ax_c.annotate(f"FA {far:.0%}", (i - 0.2, ours[i]), ha="center", va="bottom", fontsize=7)
            ax_c.annotate(f"FA {pfar:.0%}", (i + 0.2, peer[i]), ha="center", va="bottom", fontsize=7)
        ax_c.set_xticks(x, [n.replace("_", "\n") for n in scenario_names], fontsize=8)
        ax_c.set(ylabel="event-time seconds to incident", title="injected scenarios (FA: false alarms, clean windows)")
        ax_c.legend(fontsize=7)
    loop = data.get("loop")
    if loop:
        by_version: dict[str, list[tuple[float, float]]] = {}
        for e in loop.get("windows", []):
            if e.get("ap") is not None:
                by_version.setdefault(e["version"], []).append((e["day"], e["ap"]))
        for version, pts in sorted(by_version.items()):
            ax_l.plot(*zip(*sorted(pts), strict=True), "o-", label=f"v{version}")
        ax_l.axhline(loop["alert_bound"], color="tab:red", lw=0.8, label="alert bound")
        ax_l.axvline(loop["drift_day"], color="grey", ls=":", label="drift injected")
        ax_l.set(xlabel="simulated day", ylabel="realised AP", title="the loop: drift → retrain → recovery")
        ax_l.legend(fontsize=7)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def _read_rows(path: Path) -> pd.DataFrame:
    from systems.common.errors import MlsdError

    if not path.is_file():
        raise MlsdError(f"{path}: no such file")
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix in (".csv", ".txt"):
        return pd.read_csv(path)
    raise MlsdError(f"{path}: use .parquet or .csv")


def compare_files(reference: Path, current: Path, html: Path | None = None) -> dict[str, Any]:
    """Our drift verdict per column beside Evidently's on two files' shared columns (numbers numerical,
    everything else categorical); ``html`` gets Evidently's report. Rows: per column, both statistics and
    verdicts; plus the agreement (``compare``)."""
    from systems.common.errors import MlsdError

    ref, cur = _read_rows(reference), _read_rows(current)
    shared = [c for c in ref.columns if c in cur.columns]
    if not shared:
        raise MlsdError(f"{reference.name} and {current.name} share no column")
    numerical = [c for c in shared if pd.api.types.is_numeric_dtype(ref[c]) and not pd.api.types.is_bool_dtype(ref[c])]
    categorical = [c for c in shared if c not in numerical]
    for c in categorical:  # Evidently and our summaries both want strings for categories
        ref[c], cur[c] = ref[c].astype(str), cur[c].astype(str)
    frames = DriftFrames(ref[shared], cur[shared], numerical, categorical, [])
    ours, theirs = run_ours(frames), run_evidently(frames, html)
    rows = []
    for c in shared:
        o, t = ours["columns"][c], theirs["columns"][c]
        rows.append(
            {
                "column": c,
                "method": o["method"],
                "ours_statistic": float("nan") if o["statistic"] is None else o["statistic"],
                "ours_drifted": o["drifted"],
                "evidently_method": t["method"],
                "evidently_statistic": t["statistic"],
                "evidently_drifted": t["drifted"],
                "agree": o["drifted"] == t["drifted"],
            }
        )
    return {"columns": rows, **compare(ours, theirs)}
