"""Fault injection: SIGKILL one rank of a running torchrun job and measure the recovery.

    mlsd dist chaos --kill-step 25 --kill-rank 1

torchrun runs with ``--max-restarts=1``. When rank 0's ``metrics.jsonl`` shows step ``kill_step``, we read
the victim's pid file and send SIGKILL (no clean-up, like an OOM-kill or a lost node). The elastic agent
sees the dead worker, tears the group down, restarts every worker, and ``--resume`` picks up the newest
complete checkpoint. From the log we report:

* ``steps_lost``: steps that had finished before the kill but must be redone (<= ``ckpt_every``);
* ``recovery_s``: seconds from the kill to the first finished step of the restarted group.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from systems.distributed_training.launch import TRAIN_MODULE, job_env, torchrun_cmd
from systems.distributed_training.train import read_losses, read_metrics


@dataclass
class ChaosReport:
    kill_step: int  # step after which the victim was killed (as seen in rank 0's log)
    killed_rank: int
    last_step_before_kill: int  # newest step rank 0 finished before the group went down
    resumed_from: int  # checkpoint step the restarted group loaded
    steps_lost: int
    recovery_s: float
    restarts: int
    final_step: int
    returncode: int
    losses: dict[int, float]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["losses"] = {str(k): v for k, v in self.losses.items()}
        return d


def _step_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    try:
        return [r for r in read_metrics(path) if r["event"] == "step"]
    except ValueError:  # a line being written right now
        return []


def run_chaos(
    *,
    run_dir: Path,
    train_args: list[str],
    nproc: int = 2,
    kill_step: int = 25,
    kill_rank: int = 1,
    max_restarts: int = 1,
    timeout_s: float = 300.0,
) -> ChaosReport:
    """Launch the job, kill ``kill_rank`` once step ``kill_step`` is logged, wait for the end, report."""
    if not 0 <= kill_rank < nproc:
        raise ValueError(f"kill_rank {kill_rank} is not a rank of a {nproc}-process job")
    metrics = run_dir / "metrics.jsonl"
    # --resume is safe on the first attempt (no checkpoint yet) and is what makes the restart continue.
    args = [*train_args, "--run-dir", str(run_dir), "--resume"]
    cmd = torchrun_cmd(TRAIN_MODULE, args, nproc=nproc, max_restarts=max_restarts, monitor_interval_s=0.2)
    run_dir.mkdir(parents=True, exist_ok=True)
    t_kill: float | None = None
    deadline = time.monotonic() + timeout_s
    with (run_dir / "torchrun.log").open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=job_env())
        try:
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"chaos job did not finish in {timeout_s} s; see {run_dir / 'torchrun.log'}")
                if t_kill is None and any(r["step"] >= kill_step for r in _step_records(metrics)):
                    pid = int((run_dir / "pids" / f"rank{kill_rank}.pid").read_text())
                    os.kill(pid, signal.SIGKILL)
                    t_kill = time.time()
                time.sleep(0.02)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if t_kill is None:
        raise RuntimeError(f"the job ended before step {kill_step}; nothing was killed")
    return _report(metrics, t_kill=t_kill, kill_step=kill_step, kill_rank=kill_rank, returncode=proc.returncode)


def _report(metrics: Path, *, t_kill: float, kill_step: int, kill_rank: int, returncode: int) -> ChaosReport:
    records = read_metrics(metrics)
    restarts = [r for r in records if r["event"] == "start" and r["time"] > t_kill]
    if not restarts:
        raise RuntimeError("no restart after the kill: did torchrun run with --max-restarts >= 1?")
    restart = restarts[0]
    before = [r["step"] for r in records if r["event"] == "step" and r["time"] < restart["time"]]
    after = [r for r in records if r["event"] == "step" and r["time"] > restart["time"]]
    last_before = max(before) if before else -1
    resumed_from = int(restart["step"])
    return ChaosReport(
        kill_step=kill_step,
        killed_rank=kill_rank,
        last_step_before_kill=last_before,
        resumed_from=resumed_from,
        steps_lost=max(0, last_before + 1 - resumed_from),
        recovery_s=(after[0]["time"] - t_kill) if after else float("nan"),
        restarts=len(restarts),
        final_step=max((r["step"] for r in after), default=-1),
        returncode=returncode,
        losses=read_losses(metrics),
    )
