"""Build and run torchrun command lines (``python -m torch.distributed.run``) from Python.

Used by the CLI, the chaos run, the bench and the tests, so all of them launch jobs the way a user would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from systems.common.proc import free_port

TRAIN_MODULE = "systems.distributed_training.train"


def torchrun_cmd(
    module: str,
    args: Sequence[str],
    *,
    nproc: int,
    nnodes: int = 1,
    node_rank: int | None = None,
    rdzv_endpoint: str | None = None,
    rdzv_id: str = "mlsd",
    max_restarts: int = 0,
    monitor_interval_s: float = 0.5,
) -> list[str]:
    """The torchrun argv. One node: ``--standalone`` (a local c10d store on a free port).
    Several nodes: a c10d rendezvous at ``rdzv_endpoint`` that every node's launch names."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    if nnodes == 1 and rdzv_endpoint is None:
        cmd.append("--standalone")
    else:
        if rdzv_endpoint is None:
            raise ValueError("a multi-node launch needs rdzv_endpoint=HOST:PORT")
        cmd += [f"--nnodes={nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}", f"--rdzv-id={rdzv_id}"]
        if node_rank is not None:
            cmd.append(f"--node-rank={node_rank}")
    cmd += [f"--max-restarts={max_restarts}", f"--monitor-interval={monitor_interval_s}", "-m", module, *args]
    return cmd


def job_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a launched job: one intra-op thread per rank (2 shared cores: more threads only
    fight each other), and the gloo/NCCL interface pinned to loopback when nothing else is configured."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    env.setdefault("PYTHONUNBUFFERED", "1")
    if extra:
        env.update(extra)
    return env


def run_torchrun(
    module: str,
    args: Sequence[str],
    *,
    nproc: int,
    log_path: Path | None = None,
    timeout_s: float = 600.0,
    check: bool = True,
    **kwargs: object,
) -> subprocess.CompletedProcess[str]:
    """Run a torchrun job to completion; its combined output goes to ``log_path`` (or is captured)."""
    cmd = torchrun_cmd(module, args, nproc=nproc, **kwargs)  # type: ignore[arg-type]
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("w") as f:
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, text=True, env=job_env(), timeout=timeout_s)
        out = log_path.read_text()
    else:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=job_env(), timeout=timeout_s)
        out = proc.stdout + proc.stderr
    result = subprocess.CompletedProcess(cmd, proc.returncode, out, "")
    if check and proc.returncode != 0:
        raise RuntimeError(f"torchrun exited {proc.returncode}: {' '.join(cmd)}\n{out[-4000:]}")
    return result


def run_two_nodes(
    module: str,
    args: Sequence[str],
    *,
    log_dir: Path,
    nproc_per_node: int = 1,
    port: int | None = None,
    timeout_s: float = 300.0,
) -> list[int]:
    """Simulate two machines: two torchrun agents with ``--nnodes=2`` meeting at a c10d rendezvous on
    127.0.0.1:port. Exactly what two real hosts run, with 127.0.0.1 replaced by node 0's address."""
    port = port or free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    files = []
    try:
        for node in range(2):
            cmd = torchrun_cmd(
                module,
                args,
                nproc=nproc_per_node,
                nnodes=2,
                node_rank=node,
                rdzv_endpoint=f"127.0.0.1:{port}",
                rdzv_id=f"two-node-{port}",
            )
            f = (log_dir / f"node{node}.log").open("w")
            files.append(f)
            procs.append(subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=job_env()))
        return [p.wait(timeout=timeout_s) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in files:
            f.close()
