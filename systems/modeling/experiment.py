"""What every modeling experiment shares: the registry of experiments, seeding, and the JSON + PNG report.

    mlsd modeling <name> [--quick] [--out FILE.json]     # one experiment: FILE.json + FILE.png
    mlsd modeling bench                                  # all four, full form -> systems/modeling/bench/

An experiment is a module with ``run(*, quick, seed, progress) -> dict`` (JSON-ready, the measured answer)
and ``plot(result, png)``. Its result is stored as one section of a bench report (``BenchReport``), so it
carries its own provenance (command, git sha, machine, load average) and the committed
``systems/modeling/bench/modeling.json`` holds the four answers the README's numbers are generated from.
"""

from __future__ import annotations

import importlib
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from systems.common.bench import BenchReport, default_bench_path
from systems.common.errors import MlsdError

SYSTEM = "modeling"
EXPERIMENTS: dict[str, str] = {
    "regularization": "systems.modeling.regularization",
    "bias_variance": "systems.modeling.bias_variance",
    "trees_vs_dnn": "systems.modeling.trees_vs_dnn",
    "gan": "systems.modeling.gan",
}

Progress = Callable[[str], None]


def _quiet(_msg: str) -> None:
    return None


def set_seed(seed: int, *, threads: int = 1) -> None:
    """Seed numpy's legacy RNG and torch, and fix torch's intra-op threads.

    One thread by default: these models are small, and on a shared 2-core machine two OpenMP threads spend
    most of a small matmul waiting for each other (and make timings measure the neighbours)."""
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    np.random.seed(seed)


@contextmanager
def timed(into: dict[str, float], key: str) -> Iterator[None]:
    """``with timed(times, "fit"):`` adds the block's wall seconds to ``times["fit"]``."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        into[key] = into.get(key, 0.0) + time.perf_counter() - t0


def mean_ci(values: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """Mean and Student-t interval over seeds (``lo == hi == mean`` for one value: no interval claimed)."""
    from scipy import stats

    vals = [float(v) for v in values]
    mean = statistics.fmean(vals)
    if len(vals) < 2:
        return {"mean": mean, "lo": mean, "hi": mean, "n": len(vals)}
    half = stats.t.ppf(0.5 + level / 2, len(vals) - 1) * statistics.stdev(vals) / math.sqrt(len(vals))
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": len(vals)}


def rounded(obj: Any, digits: int = 5) -> Any:
    """Floats rounded (nested dicts/lists), numpy scalars made plain: a JSON a reader can diff."""
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [rounded(v, digits) for v in obj]
    if isinstance(obj, np.ndarray):  # arrays as nested lists (json's default=str would truncate them)
        return rounded(obj.tolist(), digits)
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if not math.isfinite(obj) else round(obj, digits)
    return obj


def experiment_module(name: str) -> Any:
    """The module of experiment ``name``; an unknown name is an error listing the known ones."""
    if name not in EXPERIMENTS:
        raise MlsdError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}")
    return importlib.import_module(EXPERIMENTS[name])


def png_path(name: str, out: Path | None) -> Path:
    """The plot beside the JSON: ``FILE.png`` for ``--out FILE.json``, ``bench/<name>.png`` for the committed
    report (one file holds the four sections, so each experiment's plot is named for it)."""
    if out is None:
        return default_bench_path(SYSTEM).with_name(f"{name}.png")
    return Path(out).with_suffix(".png")


def run_experiment(
    name: str,
    *,
    quick: bool = False,
    out: Path | None = None,
    png: Path | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run one experiment and write its section (JSON) and plot (PNG, default :func:`png_path`); returns the
    stored section."""
    if out is not None and Path(out).suffix != ".json":
        raise MlsdError(f"--out must name a .json file (the PNG goes beside it), got {out}")
    from threadpoolctl import threadpool_limits

    module = experiment_module(name)
    t0, cpu0 = time.perf_counter(), time.process_time()
    # one BLAS thread: the matrices are small, and two threads on a shared 2-core machine mostly wait
    with threadpool_limits(limits=1, user_api="blas"):
        result = module.run(quick=quick, seed=seed, progress=progress or _quiet)
    result = {
        **rounded(result),
        "form": "quick" if quick else "full",
        "seconds": round(time.perf_counter() - t0, 1),
        # CPU seconds of this process (all its threads): what the experiment costs, whatever else the machine
        # was doing; wall seconds stretch when other work shares the cores
        "cpu_seconds": round(time.process_time() - cpu0, 1),
    }
    report = BenchReport(SYSTEM, out=out)
    stored = report.section(name, result)
    png = png or png_path(name, out)
    png.parent.mkdir(parents=True, exist_ok=True)
    module.plot(stored, png)
    return stored
