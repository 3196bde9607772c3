"""All-reduce microbenchmark: algorithm and bus bandwidth versus message size (nccl-tests' definitions).

    torchrun --standalone --nproc_per_node=2 -m systems.distributed_training.allreduce_bench --out ar.json

For a message of S bytes all-reduced in t seconds over N ranks:

    algbw = S / t                      (what the caller sees)
    busbw = algbw * 2 (N - 1) / N      (bytes each link actually carries in a ring all-reduce:
                                        N-1 reduce-scatter steps + N-1 all-gather steps of S/N each)

busbw is comparable across N and with the link's peak; algbw is not. Rank 0 writes the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist

DEFAULT_SIZES = [1 << k for k in range(10, 27, 2)]  # 1 KiB, 4 KiB, ..., 64 MiB


def bus_factor(world_size: int) -> float:
    """Ring all-reduce traffic per rank, in units of the message size: 2(N-1)/N."""
    return 2.0 * (world_size - 1) / world_size


def iters_for(size: int) -> int:
    """Enough repeats to average out scheduling noise without spending seconds on the big messages."""
    return max(3, min(50, (8 << 20) // max(size, 1)))


def bench_sizes(sizes: list[int], *, warmup: int = 2) -> list[dict[str, float]]:
    """Collective: every rank runs it. Returns one row per size (median time over the repeats)."""
    world = dist.get_world_size()
    rows = []
    for size in sizes:
        x = torch.ones(max(1, size // 4), dtype=torch.float32)  # fp32 gradients
        for _ in range(warmup):
            dist.all_reduce(x)
        times = []
        for _ in range(iters_for(size)):
            dist.barrier()  # start together, so t measures the collective and not a straggler's lateness
            t0 = time.perf_counter()
            dist.all_reduce(x)
            times.append(time.perf_counter() - t0)
        # the slowest rank defines the collective's time
        t = torch.tensor([statistics.median(times)])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        nbytes = x.numel() * x.element_size()
        algbw = nbytes / float(t)
        rows.append(
            {
                "bytes": nbytes,
                "time_us": float(t) * 1e6,
                "algbw_GBps": algbw / 1e9,
                "busbw_GBps": algbw * bus_factor(world) / 1e9,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--max-bytes", type=int, default=64 << 20)
    p.add_argument("--min-bytes", type=int, default=1 << 10)
    args = p.parse_args(argv)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    sizes = [s for s in DEFAULT_SIZES if args.min_bytes <= s <= args.max_bytes]
    try:
        rows = bench_sizes(sizes)
        if dist.get_rank() == 0:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            payload = {"backend": backend, "world_size": dist.get_world_size(), "rows": rows}
            args.out.write_text(json.dumps(payload, indent=1))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
