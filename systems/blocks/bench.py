"""Benchmarks of the blocks: attention (ours vs fused SDPA) and image-pipeline throughput.

    mlsd blocks bench --out .mlsd/bench/blocks.json      # JSON + blocks.png beside it

What is *measured* and what is *computed*:

* ``attention.<T>.ms_scratch`` / ``ms_sdpa``: measured wall time (median of
  ``repeats`` runs after one warm-up) of one forward pass, ``torch.no_grad()``,
  fp32, (B, H, T, D) = (1, 8, T, 64), no mask, one intra-op thread by default.
* ``attention.<T>.score_matrix_mib``: computed, the bytes of one (B, H, T, T)
  fp32 matrix. The from-scratch version keeps two of them alive (scores, then
  softmax weights); a fused kernel (flash-style, blocked, online softmax) never
  materialises one.
* ``attention.<T>.peak_mib_scratch`` / ``peak_mib_sdpa``: measured growth of the
  process's peak resident set (Linux ``VmHWM``, reset through
  ``/proc/self/clear_refs``) during one call. It counts pages the allocator had to
  touch, so freed memory that is reused is not counted again; absent where the
  kernel does not allow the reset.
* ``pipeline.images_per_s.<num_workers>``: measured steady-state images/s of the
  training DataLoader over PNG files on disk (median of epochs after a warm-up
  epoch; persistent workers, so process start-up is excluded).
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["bench_attention", "bench_pipeline", "peak_rss_delta_mib", "plot_bench", "run_bench"]


def _rss_kib() -> dict[str, int]:
    text = Path("/proc/self/status").read_text()
    return {k: int(m.group(1)) for k in ("VmHWM", "VmRSS") if (m := re.search(rf"{k}:\s+(\d+)", text))}


def _pin_malloc() -> None:
    """Make freed large blocks go back to the OS, so every call's big tensors show up in RSS.

    glibc raises its mmap threshold (up to 32 MiB) after large frees and then serves later
    allocations from already-touched heap pages, which hides them from a peak-RSS reading.
    Setting the threshold explicitly turns that adaptation off (Linux/glibc only; else a no-op).
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD: blocks >= 64 KiB are mmap'd, munmap'd on free
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        return


def peak_rss_delta_mib(fn: Callable[[], Any]) -> float | None:
    """Growth of peak RSS (MiB) while ``fn`` runs, or None if it cannot be measured here."""
    _pin_malloc()
    try:
        base = _rss_kib()["VmRSS"]
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except (OSError, KeyError):
        return None
    result = fn()
    peak = _rss_kib().get("VmHWM")
    del result
    return None if peak is None else max(0.0, (peak - base) / 1024)


def _median_ms(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up: first-call allocations and kernel selection
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def bench_attention(
    seq_lens: Sequence[int] = (128, 256, 512, 1024, 2048),
    *,
    batch: int = 1,
    heads: int = 8,
    head_dim: int = 64,
    repeats: int = 5,
    threads: int = 1,
) -> dict[str, float | None]:
    """Time and memory of ``scaled_dot_product_attention`` (ours) vs ``F.scaled_dot_product_attention``.

    ``threads=1`` by default: on a shared 2-core machine two OpenMP threads spend most of a
    small call waiting for each other (T=128 went from ~1 ms to ~60 ms), which measures the
    neighbours, not the kernels.
    """
    import torch
    import torch.nn.functional as F

    from systems.blocks.attention import scaled_dot_product_attention

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    out: dict[str, float | None] = {}
    with torch.no_grad():
        for t in seq_lens:
            q, k, v = (torch.randn(batch, heads, t, head_dim) for _ in range(3))

            def ours(q: torch.Tensor = q, k: torch.Tensor = k, v: torch.Tensor = v) -> torch.Tensor:
                return scaled_dot_product_attention(q, k, v)

            def fused(q: torch.Tensor = q, k: torch.Tensor = k, v: torch.Tensor = v) -> torch.Tensor:
                return F.scaled_dot_product_attention(q, k, v)

            torch.testing.assert_close(ours(), fused(), atol=1e-4, rtol=1e-4)  # same numbers first
            out[f"attention.{t}.ms_scratch"] = round(_median_ms(ours, repeats), 3)
            out[f"attention.{t}.ms_sdpa"] = round(_median_ms(fused, repeats), 3)
            out[f"attention.{t}.score_matrix_mib"] = batch * heads * t * t * 4 / 2**20
            for name, fn in (("scratch", ours), ("sdpa", fused)):
                peak = peak_rss_delta_mib(fn)
                out[f"attention.{t}.peak_mib_{name}"] = None if peak is None else round(peak, 1)
    torch.set_num_threads(previous_threads)
    return out


def bench_pipeline(
    root: Path,
    *,
    num_workers: Sequence[int] = (0, 1, 2),
    batch_size: int = 128,
    size: int = 32,
    repeats: int = 3,
) -> dict[str, float]:
    """Images/s of the training DataLoader per ``num_workers``."""
    from systems.blocks.image_pipeline import list_images, measure_throughput

    rates = measure_throughput(root, num_workers=num_workers, batch_size=batch_size, size=size, repeats=repeats)
    out = {f"pipeline.images_per_s.{w}": round(r, 1) for w, r in rates.items()}
    out["pipeline.num_images"] = float(len(list_images(root)))
    return out


def plot_bench(result: dict[str, Any], png: Path) -> None:
    """Two panels: attention ms and peak MiB vs T; pipeline images/s vs num_workers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seq = sorted({int(k.split(".")[1]) for k in result if k.startswith("attention.")})
    workers = sorted(int(k.rsplit(".", 1)[1]) for k in result if k.startswith("pipeline.images_per_s."))
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.2))
    for impl, style in (("scratch", "o-"), ("sdpa", "s-")):
        ax1.plot(seq, [result[f"attention.{t}.ms_{impl}"] for t in seq], style, label=impl)
        peaks = [result.get(f"attention.{t}.peak_mib_{impl}") for t in seq]
        if all(p is not None for p in peaks):  # log axis: show a measured 0 as 0.1
            ax2.plot(seq, [max(float(p or 0.0), 0.1) for p in peaks], style, label=f"{impl} (measured peak RSS)")
    ax2.plot(seq, [2 * result[f"attention.{t}.score_matrix_mib"] for t in seq], "k--", label="2 x (B,H,T,T) fp32")
    for ax, ylabel in ((ax1, "forward ms (median)"), (ax2, "extra memory MiB")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length T")
        ax.set_ylabel(ylabel)
        ax.legend()
        ax.grid(alpha=0.3)
    ax1.set_title("attention: from scratch vs F.scaled_dot_product_attention")
    ax2.set_title("attention memory")
    ax3.bar([str(w) for w in workers], [result[f"pipeline.images_per_s.{w}"] for w in workers])
    ax3.set_xlabel("DataLoader num_workers")
    ax3.set_ylabel("images/s (median)")
    ax3.set_title(f"PNG pipeline, {int(result.get('pipeline.num_images', 0))} files")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def run_bench(
    out: Path | None,
    *,
    data_dir: Path,
    seq_lens: Sequence[int] = (128, 256, 512, 1024, 2048),
    num_workers: Sequence[int] = (0, 1, 2),
    copies: int = 2,
    image_size: int = 64,
    load_size: int = 32,
    repeats: int = 5,
    threads: int = 1,
    limit: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run both benchmarks; the ``attention`` and ``pipeline`` sections go to ``out`` (default: the committed
    ``systems/blocks/bench/blocks.json``) with a PNG beside it. Returns the flat dotted-key result."""
    from systems.blocks.image_pipeline import write_digits_images
    from systems.common.bench import BenchReport

    say = progress or (lambda _msg: None)
    say("attention")
    result: dict[str, Any] = dict(bench_attention(seq_lens, repeats=repeats, threads=threads))
    say("writing PNG files")
    name = f"digits_png_{image_size}px_x{copies}" + ("" if limit is None else f"_first{limit}")
    root = write_digits_images(data_dir / name, size=image_size, copies=copies, limit=limit)
    say("data pipeline")
    result.update(bench_pipeline(root, num_workers=num_workers, size=load_size, repeats=max(3, repeats // 2)))
    result["config"] = {
        "attention": {
            "batch": 1,
            "heads": 8,
            "head_dim": 64,
            "dtype": "float32",
            "pass": "forward, no_grad",
            "threads": threads,
        },
        "pipeline": {"image_size_on_disk": image_size, "load_size": load_size, "copies": copies, "batch_size": 128},
        "repeats": repeats,
        "statistic": "median",
    }
    for t in seq_lens:  # the headline of the attention table: how many times slower the unfused version is
        result[f"attention.{t}.ratio"] = round(
            result[f"attention.{t}.ms_scratch"] / result[f"attention.{t}.ms_sdpa"], 2
        )
    report = BenchReport("blocks", out=out)
    for section in ("attention", "pipeline"):
        flat = {k.removeprefix(f"{section}."): v for k, v in result.items() if k.startswith(f"{section}.")}
        report.section(section, {**flat, "config": result["config"][section]})
    report.plot(lambda png: plot_bench(result, png))
    return result
