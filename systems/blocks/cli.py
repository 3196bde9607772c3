"""``mlsd blocks``: run and benchmark the five ML-coding-round blocks.

mlsd blocks demo                                  # each block briefly, checked against its reference
mlsd blocks bench        # attention timing + pipeline throughput -> systems/blocks/bench/blocks.json (+ PNG)
python -m systems.blocks.logistic                 # the logistic-regression workflow script
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console()

app = typer.Typer(no_args_is_help=True, help="The five ML-coding-round blocks: attention, images, MLP, EMA, logreg.")


def _check_attention() -> str:
    import torch
    from torch import nn

    from systems.blocks.attention import MultiHeadAttention, causal_mask

    torch.manual_seed(0)
    ref = nn.MultiheadAttention(64, 8, batch_first=True)
    mine = MultiHeadAttention(64, 8).load_from_torch(ref)
    x = torch.randn(4, 32, 64)
    pad = torch.zeros(4, 32, dtype=torch.bool)
    pad[1, 20:] = True
    with torch.no_grad():
        a, _ = ref(x, x, x, key_padding_mask=pad, attn_mask=~causal_mask(32), need_weights=False)
        b = mine(x, key_padding_mask=pad, is_causal=True)
    return f"vs nn.MultiheadAttention (causal + padding): max |diff| {(a - b).abs().max().item():.1e}"


def _check_pipeline() -> str:
    import torch

    from systems.blocks.image_pipeline import make_dataloader, write_digits_images

    with tempfile.TemporaryDirectory() as tmp:
        root = write_digits_images(Path(tmp), size=32, limit=300)
        loader = make_dataloader(root, batch_size=64, num_workers=2, seed=0, size=32, drop_last=False)
        x = torch.cat([b for b, _ in loader])
        del loader
    return f"{x.shape[0]} train images {tuple(x.shape[1:])}, normalised mean {x.mean():+.4f} std {x.std():.4f}"


def _check_feedforward() -> str:
    import torch
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler
    from torch import nn

    from systems.blocks.feedforward import FeedForwardClassifier, count_parameters

    torch.manual_seed(0)
    data = load_breast_cancer()
    x_tr, x_te, y_tr, y_te = train_test_split(
        data.data, data.target, test_size=0.25, stratify=data.target, random_state=0
    )
    sc = StandardScaler().fit(x_tr)
    xt, xe = (torch.tensor(sc.transform(a), dtype=torch.float32) for a in (x_tr, x_te))
    model = FeedForwardClassifier(30, 32, 1, dropout=0.1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.binary_cross_entropy_with_logits(
            model(xt).squeeze(1), torch.tensor(y_tr, dtype=torch.float32)
        ).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = ((model(xe).squeeze(1) > 0).numpy() == y_te).mean()
    return f"breast_cancer held-out accuracy {acc:.3f}, {count_parameters(model)} parameters"


def _check_ema() -> str:
    import math

    import numpy as np
    import pandas as pd

    from systems.blocks.ema import ema, time_aware_ema

    rng = np.random.default_rng(0)
    x = rng.normal(size=100_000)
    t = np.cumsum(rng.choice([0, 1, 100, 2000], size=x.size)) / 1000.0
    d1 = np.abs(ema(x, 0.05) - pd.Series(x).ewm(alpha=0.05, adjust=False).mean().to_numpy()).max()
    times = pd.to_datetime(np.round(t * 1000).astype("int64"), unit="ms")
    ref = pd.Series(x).ewm(halflife=pd.Timedelta(seconds=1), times=times).mean().to_numpy()
    d2 = np.abs(time_aware_ema(x, t, 1 / math.log(2), adjust=True) - ref).max()
    return f"100k points vs pandas ewm: regular {d1:.1e}, irregular times {d2:.1e}"


def _check_logistic() -> str:
    from systems.blocks.logistic import run_workflow

    m = run_workflow()
    return (
        f"C={m['best_C']:g}: acc {m['accuracy']:.3f} F1 {m['f1']:.3f} ROC-AUC {m['roc_auc']:.3f}; "
        f"numpy vs sklearn coef {m['scratch_max_abs_coef_diff']:.1e}"
    )


@app.command()
def demo() -> None:
    """Run each block briefly against its reference and print a table."""
    checks: list[tuple[str, str, Callable[[], str]]] = [
        ("attention", "systems/blocks/attention.py", _check_attention),
        ("image pipeline", "systems/blocks/image_pipeline.py", _check_pipeline),
        ("feed-forward", "systems/blocks/feedforward.py", _check_feedforward),
        ("EMA filter", "systems/blocks/ema.py", _check_ema),
        ("logistic regression", "systems/blocks/logistic.py", _check_logistic),
    ]
    table = Table(title="mlsd blocks demo")
    for col in ("block", "module", "result", "s"):
        table.add_column(col)
    for name, module, check in checks:
        with console.status(name):
            t0 = time.perf_counter()
            result = check()
        table.add_row(name, module, result, f"{time.perf_counter() - t0:.1f}")
    console.print(table)


@app.command()
def bench(
    out: Annotated[
        Path | None, typer.Option(help="JSON report (a PNG beside it); default: systems/blocks/bench/blocks.json")
    ] = None,
    seq_lens: Annotated[str, typer.Option(help="comma-separated attention sequence lengths")] = "128,256,512,1024,2048",
    workers: Annotated[str, typer.Option(help="comma-separated DataLoader num_workers")] = "0,1,2",
    copies: Annotated[int, typer.Option(help="copies of the 1,797 digits written as PNG")] = 2,
    image_size: Annotated[int, typer.Option(help="side in pixels of the PNG files on disk")] = 64,
    repeats: Annotated[int, typer.Option(help="timed repeats; the median is reported")] = 5,
    threads: Annotated[int, typer.Option(help="torch intra-op threads for the attention timing")] = 1,
    limit: Annotated[int | None, typer.Option(help="write only the first N digits (quick runs)")] = None,
) -> None:
    """Attention time/memory vs sequence length (ours vs SDPA) and image-pipeline images/s vs workers."""
    from systems.blocks.bench import run_bench
    from systems.common.settings import MlsdSettings

    settings = MlsdSettings()
    data_dir = settings.system_dir("blocks")
    with console.status("blocks bench") as status:
        result = run_bench(
            out,
            data_dir=data_dir,
            seq_lens=[int(s) for s in seq_lens.split(",") if s.strip()],
            num_workers=[int(w) for w in workers.split(",") if w.strip()],
            copies=copies,
            image_size=image_size,
            repeats=repeats,
            threads=threads,
            limit=limit,
            progress=lambda m: status.update(f"blocks bench: {m}"),
        )
    seq = sorted({int(k.split(".")[1]) for k in result if k.startswith("attention.")})
    table = Table(title=f"attention forward, (1, 8, T, 64) fp32, {threads} thread(s)")
    for col in ("T", "scratch ms", "SDPA ms", "ratio", "(B,H,T,T) MiB", "peak MiB scratch", "peak MiB SDPA"):
        table.add_column(col, justify="right")
    for t in seq:
        s, f = result[f"attention.{t}.ms_scratch"], result[f"attention.{t}.ms_sdpa"]
        table.add_row(
            str(t),
            f"{s:.2f}",
            f"{f:.2f}",
            f"{s / f:.1f}x",
            f"{result[f'attention.{t}.score_matrix_mib']:.1f}",
            str(result.get(f"attention.{t}.peak_mib_scratch")),
            str(result.get(f"attention.{t}.peak_mib_sdpa")),
        )
    console.print(table)
    pipe = Table(title=f"image pipeline ({int(result['pipeline.num_images'])} PNG files)")
    pipe.add_column("num_workers", justify="right")
    pipe.add_column("images/s", justify="right")
    for key in sorted(k for k in result if k.startswith("pipeline.images_per_s.")):
        pipe.add_row(key.rsplit(".", 1)[1], f"{result[key]:,.0f}")
    console.print(pipe)
    console.print(f"wrote {out or 'systems/blocks/bench/blocks.json'} and its PNG")
