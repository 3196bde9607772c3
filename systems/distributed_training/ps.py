"""Parameter-server training of the same GPT on the same data, over ``torch.distributed.rpc``.

    torchrun --standalone --nproc_per_node=3 -m systems.distributed_training.ps --mode sync --preset cpu_debug
    torchrun --standalone --nproc_per_node=3 -m systems.distributed_training.ps --mode async --staleness 2

Rank 0 is the server (holds the weights and the AdamW state); ranks 1..N are workers. Each step a worker
computes a gradient on its shard (``global_batch / N`` sequences, DistributedSampler as in DDP) and calls
``push`` on the server, which returns fresh weights:

* ``sync``: the server waits for all N gradients of a version, averages, clips, steps once (a barrier per
  step: the same arithmetic as DDP, so the losses match DDP's to float precision);
* ``async``: each gradient is applied as it arrives (N optimiser steps per N pushes, on batches N times
  smaller); a gradient computed on weights more than ``staleness`` versions old is dropped and the worker
  just takes the fresh weights (bounded staleness).

Traffic: every push sends P floats up and receives P floats down, all through the server's one link:
2·N·P·4 bytes per global step, versus the ring all-reduce's 2·(N−1)/N·P·4 per rank spread over N links.
Rank 0 writes ``ps_result.json`` in the run dir.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed.rpc as rpc
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from systems.distributed_training.data import BatchStream, TokenBlocks, load_tokens, split_tokens
from systems.distributed_training.evaluate import eval_loss
from systems.distributed_training.model import GPT
from systems.distributed_training.train import PRESETS, TrainConfig, build_optimizer, get_preset, lr_at

log = logging.getLogger("systems.distributed_training.ps")

Mode = Literal["sync", "async"]


@dataclass
class PSResult:
    mode: str
    n_workers: int
    staleness_bound: int
    global_steps: int  # steps of global_batch_size samples processed in total (same meaning as DDP steps)
    updates: int  # optimiser steps the server applied
    dropped_stale: int
    samples: int
    wall_s: float
    steps_per_s: float  # global-batch steps per second (comparable with DDP's optimiser steps/s)
    bytes_per_step: int  # bytes through the server per global-batch step (gradients up + weights down)
    n_params: int
    final_eval_loss: float
    losses: dict[int, float] = field(default_factory=dict)  # version -> mean worker loss of that step (sync)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["losses"] = {str(k): v for k, v in self.losses.items()}
        return d


class ParameterServer:
    """Weights + optimiser on rank 0. Called concurrently from RPC threads; one lock guards the state."""

    def __init__(self, cfg: TrainConfig, *, n_workers: int, mode: Mode, staleness: int) -> None:
        torch.manual_seed(cfg.seed)  # same init as DDP's model
        self.model = GPT(cfg.model)
        # async applies N updates per global step: stretch the schedule over all of them.
        sched_cfg = cfg if mode == "sync" else replace(cfg, max_steps=cfg.max_steps * n_workers)
        self.cfg, self.n_workers, self.mode, self.staleness = cfg, n_workers, mode, staleness
        self.optimizer = build_optimizer(self.model, cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_at(s, sched_cfg) / cfg.lr)
        self.params = [p for p in self.model.parameters()]
        self.cond = threading.Condition()
        self.version = 0
        self.grad_sum: torch.Tensor | None = None
        self.loss_sum = 0.0
        self.arrived = 0
        self.updates = 0
        self.dropped = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.losses: dict[int, float] = {}
        self.t_first: float | None = None
        self.t_last = 0.0

    def weights(self) -> torch.Tensor:
        return parameters_to_vector(self.params).detach().clone()

    def _apply(self, grad: torch.Tensor) -> None:
        # write the flat gradient into .grad of each parameter, clip like DDP does, one AdamW step
        offset = 0
        for p in self.params:
            n = p.numel()
            p.grad = grad[offset : offset + n].view_as(p).clone()
            offset += n
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.updates += 1
        self.version += 1
        self.t_last = time.perf_counter()

    def push(self, version: int, grad: torch.Tensor, loss: float) -> tuple[int, torch.Tensor]:
        """A worker's gradient computed on weights ``version``; returns (new version, weights)."""
        with self.cond:
            if self.t_first is None:
                self.t_first = time.perf_counter()
            self.bytes_in += grad.numel() * grad.element_size()
            if self.mode == "sync":
                self.grad_sum = grad.clone() if self.grad_sum is None else self.grad_sum + grad
                self.loss_sum += loss
                self.arrived += 1
                if self.arrived == self.n_workers:  # last of this version: average, step, wake the others
                    self.losses[self.version] = self.loss_sum / self.n_workers
                    assert self.grad_sum is not None
                    self._apply(self.grad_sum / self.n_workers)
                    self.grad_sum, self.loss_sum, self.arrived = None, 0.0, 0
                    self.cond.notify_all()
                else:
                    self.cond.wait_for(lambda: self.version > version, timeout=300.0)
            elif self.version - version > self.staleness:
                self.dropped += 1  # too stale: the gradient points somewhere the weights no longer are
            else:
                self.losses[self.updates] = loss
                self._apply(grad)
            w = self.weights()
            self.bytes_out += w.numel() * w.element_size()
            return self.version, w


_SERVER: ParameterServer | None = None


def _rpc_push(version: int, grad: torch.Tensor, loss: float) -> tuple[int, torch.Tensor]:
    assert _SERVER is not None, "push reached a process that is not the server"
    return _SERVER.push(version, grad, loss)


def _rpc_pull() -> tuple[int, torch.Tensor]:
    assert _SERVER is not None
    with _SERVER.cond:
        w = _SERVER.weights()
        _SERVER.bytes_out += w.numel() * w.element_size()
        return _SERVER.version, w


def run_worker(cfg: TrainConfig, *, worker: int, n_workers: int, tokens_path: Path) -> None:
    """Worker ``worker`` (0-based): pull, then ``max_steps`` x (gradient on own shard -> push)."""
    if cfg.global_batch_size % n_workers:
        raise ValueError(f"global_batch_size {cfg.global_batch_size} must split over {n_workers} workers")
    model = GPT(cfg.model)
    params = list(model.parameters())
    train_tokens, _ = split_tokens(load_tokens(tokens_path))
    stream = BatchStream(
        TokenBlocks(train_tokens, cfg.model.block_size),
        micro_batch_size=cfg.global_batch_size // n_workers,
        rank=worker,
        world_size=n_workers,
        seed=cfg.seed,
    )
    batches = iter(stream)
    version, w = rpc.rpc_sync("server", _rpc_pull)
    for _ in range(cfg.max_steps):
        vector_to_parameters(w, params)
        x, y = next(batches)
        _, loss = model(x, y)
        assert loss is not None
        model.zero_grad(set_to_none=True)
        loss.backward()
        grad = parameters_to_vector([p.grad if p.grad is not None else torch.zeros_like(p) for p in params])
        version, w = rpc.rpc_sync("server", _rpc_push, args=(version, grad, loss.item()))


def run_server(cfg: TrainConfig, *, server: ParameterServer, tokens_path: Path, run_dir: Path) -> PSResult:
    """Host the parameter server until every worker is done (``rpc.shutdown`` waits), then report."""
    rpc.shutdown()  # graceful: blocks until all workers have finished their RPCs and shut down too
    n_workers, mode, staleness = server.n_workers, server.mode, server.staleness
    wall = max(1e-9, server.t_last - (server.t_first or server.t_last))
    samples = cfg.max_steps * cfg.global_batch_size  # every worker did max_steps pushes of global/N samples
    # eval on the held-out tail of the same corpus (the one DDP's final weights are evaluated on)
    _, val = split_tokens(load_tokens(tokens_path))
    result = PSResult(
        mode=mode,
        n_workers=n_workers,
        staleness_bound=staleness,
        global_steps=cfg.max_steps,
        updates=server.updates,
        dropped_stale=server.dropped,
        samples=samples,
        wall_s=wall,
        steps_per_s=cfg.max_steps / wall,
        bytes_per_step=int((server.bytes_in + server.bytes_out) / cfg.max_steps),
        n_params=sum(p.numel() for p in server.params),
        final_eval_loss=eval_loss(server.model, val),
        losses=server.losses,
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "ps_result.json").write_text(json.dumps(result.to_dict(), indent=1))
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu_debug", choices=sorted(PRESETS))
    p.add_argument("--mode", default="sync", choices=["sync", "async"])
    p.add_argument("--staleness", type=int, default=2, help="async: max versions a gradient may lag")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--global-batch-size", type=int)
    p.add_argument("--tokens", type=Path, required=True)
    p.add_argument("--run-dir", type=Path, required=True)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """torchrun entry: rank 0 serves, the others work."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = get_preset(args.preset, max_steps=args.max_steps, global_batch_size=args.global_batch_size)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if world < 3:
        raise SystemExit("a parameter server needs >= 3 processes: 1 server + >= 2 workers")
    n_workers = world - 1
    opts = rpc.TensorPipeRpcBackendOptions(num_worker_threads=max(8, 2 * n_workers), rpc_timeout=300)
    name = "server" if rank == 0 else f"worker{rank}"
    global _SERVER
    if rank == 0:  # the server object must exist before any worker can reach it
        _SERVER = ParameterServer(cfg, n_workers=n_workers, mode=args.mode, staleness=args.staleness)
    rpc.init_rpc(name, rank=rank, world_size=world, rpc_backend_options=opts)
    if rank == 0:
        assert _SERVER is not None
        res = run_server(cfg, server=_SERVER, tokens_path=args.tokens, run_dir=args.run_dir)
        log.info(
            "ps %s: %d workers, %.2f steps/s, %.0f bytes/step, eval loss %.4f, dropped %d",
            res.mode,
            res.n_workers,
            res.steps_per_s,
            res.bytes_per_step,
            res.final_eval_loss,
            res.dropped_stale,
        )
    else:
        run_worker(cfg, worker=rank - 1, n_workers=n_workers, tokens_path=args.tokens)
        rpc.shutdown()


if __name__ == "__main__":
    # Import ourselves by name so RPC pickles functions as systems.distributed_training.ps.*, not __main__.*
    from systems.distributed_training.ps import main as _main

    _main()
