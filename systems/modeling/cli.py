"""``mlsd modeling``: the research round's questions answered by seeded experiments on real data.

    mlsd modeling regularization [--quick] [--out FILE.json]   # FILE.json + FILE.png
    mlsd modeling bias_variance  [--quick] [--out FILE.json]
    mlsd modeling trees_vs_dnn   [--quick] [--out FILE.json]
    mlsd modeling gan            [--quick] [--out FILE.json]
    mlsd modeling bench [--only NAME,...] [--quick]   # all four -> systems/modeling/bench/modeling.json + PNGs
    mlsd modeling demo                                # the four quick forms into the data dir

Without ``--out`` an experiment writes its section of the committed ``systems/modeling/bench/modeling.json``
(and ``bench/<name>.png``), which the README's numbers are generated from (``mlsd bench report``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from systems.modeling.experiment import EXPERIMENTS, png_path, run_experiment

console = Console()
app = typer.Typer(
    no_args_is_help=True,
    help="Research-round answers: regularization, bias_variance, trees_vs_dnn, gan (seeded, measured).",
)

QuickOpt = Annotated[bool, typer.Option("--quick", help="the seconds-long form (fewer seeds, grid points, steps)")]
OutOpt = Annotated[
    Path | None,
    typer.Option(help="JSON result (a PNG beside it); default: the committed systems/modeling/bench/modeling.json"),
]
SeedOpt = Annotated[int, typer.Option(help="base seed (data split and the first model seed)")]


def _run(name: str, quick: bool, out: Path | None, seed: int, png: Path | None = None) -> dict[str, Any]:
    png = png or png_path(name, out)
    with console.status(name) as status:
        result = run_experiment(name, quick=quick, out=out, png=png, seed=seed, progress=lambda m: status.update(m))
    _summary(name, result)
    where = out or "systems/modeling/bench/modeling.json"
    console.print(f"[green]✓[/] {name} ({result['form']}, {result['seconds']:.0f} s): wrote {where} and {png}")
    return result


def _summary(name: str, r: dict[str, Any]) -> None:
    """The headline rows of each experiment, as a table."""
    table = Table(title=f"{name} ({r['form']} form)")
    rows: list[tuple[str, ...]] = []
    cols: tuple[str, ...]
    if name == "regularization":
        cols = ("technique", "strength", "test acc", "train-val gap", "exact zeros", "s/run")
        for tech in r["ranking_by_test_acc"]:
            t = r["techniques"][tech]
            rows.append(
                (
                    tech,
                    f"{t['strength']:g}",
                    f"{t['test_acc']['mean']:.3f}",
                    f"{t['gap_acc']:.3f}",
                    f"{t['zero_fraction']:.1%}",
                    f"{t['seconds_per_run']:.2f}",
                )
            )
    elif name == "bias_variance":
        cols = ("sweep", "best parameter", "test error", "bias² + noise there", "variance there")
        for sweep, best in r["best"].items():
            row = next(x for x in r["sweeps"][sweep] if x["param"] == best["param"])
            rows.append(
                (
                    sweep,
                    f"{best['param']:g}",
                    f"{row['error']:.3f}",
                    f"{row['bias2_noise']:.3f}",
                    f"{row['variance']:.3f}",
                )
            )
    elif name == "trees_vs_dnn":
        cols = ("data", "metric", "model", "test", "fit s", "one row µs", "winner")
        for data, d in r["datasets"].items():
            for fam, m in d["models"].items():
                rows.append(
                    (
                        data,
                        d["metric"],
                        fam,
                        f"{m['test']:.3f}",
                        f"{m['fit_s']:.1f}",
                        f"{m['single_row_us']:,.0f}",
                        d["winner"],
                    )
                )
    else:
        cols = ("variant / strategy", "coverage of 10 | AP", "Fréchet distance | CP@100")
        for v, d in r["digits"].items():
            rows.append((f"digits {v}", f"{d['coverage']['mean']:.1f}", f"{d['fd']['mean']:.1f}"))
        for strategy, m in r["fraud"]["summary"].items():
            rows.append((f"fraud {strategy}", f"{m['ap']['mean']:.3f}", f"{m['cp@100']['mean']:.3f}"))
    for col in cols:
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    console.print(table)


@app.command("regularization")
def regularization(quick: QuickOpt = False, out: OutOpt = None, seed: SeedOpt = 0) -> None:
    """L2 vs AdamW decay, L1 (sparsity), dropout, batch norm (+ decay), early stopping, augmentation on digits."""
    _run("regularization", quick, out, seed)


@app.command("bias_variance")
def bias_variance(quick: QuickOpt = False, out: OutOpt = None, seed: SeedOpt = 0) -> None:
    """Bootstrap bias^2 / variance across model complexity on a real regression set; MLP width sweep."""
    _run("bias_variance", quick, out, seed)


@app.command("trees_vs_dnn")
def trees_vs_dnn(quick: QuickOpt = False, out: OutOpt = None, seed: SeedOpt = 0) -> None:
    """Gradient boosting vs MLP (and CNN / embedding model) on tabular, image and text data."""
    _run("trees_vs_dnn", quick, out, seed)


@app.command("gan")
def gan(quick: QuickOpt = False, out: OutOpt = None, seed: SeedOpt = 0) -> None:
    """A digits GAN with mode collapse measured and remedies; a conditional tabular GAN vs SMOTE on fraud."""
    _run("gan", quick, out, seed)


@app.command()
def bench(
    out: OutOpt = None,
    only: Annotated[str | None, typer.Option(help="comma-separated experiments (default: all four)")] = None,
    quick: QuickOpt = False,
    seed: SeedOpt = 0,
) -> None:
    """Run the experiments (full form) into one bench JSON with a PNG per experiment."""
    from systems.common.errors import MlsdError

    names = [n.strip() for n in only.split(",")] if only else list(EXPERIMENTS)
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        raise MlsdError(f"unknown experiment(s) {', '.join(unknown)}; known: {', '.join(EXPERIMENTS)}")
    for name in names:
        console.rule(name)
        # one JSON for all four; each experiment's plot beside it, named for the experiment
        _run(name, quick, out, seed, png=None if out is None else out.with_name(f"{name}.png"))


@app.command()
def demo() -> None:
    """The four experiments in their quick form (seconds each), written under the data dir."""
    from systems.common.settings import MlsdSettings

    settings = MlsdSettings()
    settings.ensure_dirs()
    folder = settings.system_dir("modeling")
    t0 = time.perf_counter()
    for name in EXPERIMENTS:
        console.rule(name)
        _run(name, True, folder / f"{name}.json", 0)
    console.print(
        f"[green]✓[/] modeling demo: four quick experiments in {time.perf_counter() - t0:.0f} s, results in {folder}"
    )
