"""``mlsd fraud up``: scorer processes, the API, the label sink and the retrain listener, supervised.

Run: ``mlsd broker up && mlsd fraud up --scorers 2 --api`` (until Ctrl-C or SIGTERM).

What dies is restarted, and what is restarted is said: a child process (a scorer, the API) that exits --
``kill -9`` included -- is started again after a backoff that doubles up to 30 s, and the others never notice
(the API dying does not stop a scorer: their only link is the broker and the stores). The label sink and the
retrain listener are :class:`~systems.common.broker.SupervisedLoop` threads, restarted the same way. With
``health_port`` set, ``/readyz`` answers 503 with the reason while any child or loop is down.

Children die with their parent: each child asks Linux (``PR_SET_PDEATHSIG``) for a SIGTERM when this process
dies, so ``kill -9`` of ``mlsd fraud up`` cannot leave scorers consuming, or an API holding its port, behind.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from systems.common.broker import SupervisedLoop, serve_health
from systems.common.proc import die_with_parent
from systems.fraud.settings import FraudSettings

log = logging.getLogger(__name__)


@dataclass
class Child:
    """One child process: started, watched, restarted with backoff when it exits, stopped with SIGTERM."""

    name: str
    cmd: list[str]
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    restarts: int = field(default=0, init=False)
    _due: float = field(default=0.0, init=False)
    _backoff: float = field(default=0.0, init=False)
    _started: float = field(default=0.0, init=False)

    def start(self) -> None:
        # this process's health port is its own: a child inheriting it would fail to bind it
        env = {k: v for k, v in os.environ.items() if k.upper() not in ("MLSD_FRAUD_HEALTH_PORT", "MLSD_HEALTH_PORT")}
        self.process = subprocess.Popen(self.cmd, env=env, preexec_fn=die_with_parent())
        self._started = time.monotonic()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check(self) -> str | None:
        """Restart the child if it exited and its backoff has passed; returns what to tell the operator."""
        if self.process is None or self.alive:
            return None
        now = time.monotonic()
        if self._due == 0.0:  # just found dead
            if now - self._started > 60.0:
                self._backoff = 0.0  # it had been running fine: restart at once
            self._due = now + self._backoff
            code = self.process.returncode
            return f"{self.name} exited with code {code}; restarting in {self._backoff:.0f} s"
        if now < self._due:
            return None
        self.start()
        self.restarts += 1
        self._due = 0.0
        self._backoff = min(max(2 * self._backoff, self.backoff_s), self.max_backoff_s)
        return f"{self.name} restarted (pid {self.process.pid if self.process else '?'}, restart {self.restarts})"

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.alive and self.process is not None:
            self.process.send_signal(signal.SIGTERM)
        if self.process is not None:
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def run_up(
    settings: FraudSettings,
    *,
    scorers: int,
    api: bool,
    label_sink: bool,
    retrain_listener: bool,
    say: Callable[[str], None],
    stop: threading.Event,
) -> None:
    """Start everything, then watch it until ``stop``: the body of ``mlsd fraud up``."""
    from prometheus_client import CollectorRegistry

    from systems.fraud.feedback import run_label_sink, run_retrain_listener

    history = ["--history", str(settings.history)] if settings.history.exists() else []
    children = [
        Child(f"scorer {i + 1}", [sys.executable, "-m", "systems.fraud.stream", *history]) for i in range(scorers)
    ]
    if api:
        uvicorn = [sys.executable, "-m", "uvicorn", "--factory", "systems.fraud.serve:create_app"]
        children.append(Child("API", [*uvicorn, "--host", settings.host, "--port", str(settings.api_port)]))
    registry = CollectorRegistry()
    loops: list[SupervisedLoop] = []
    if label_sink:
        loops.append(
            SupervisedLoop("fraud-label-sink", lambda: run_label_sink(settings, stop), stop=stop, registry=registry)
        )
    if retrain_listener:
        loops.append(
            SupervisedLoop(
                "fraud-retrain-listener", lambda: run_retrain_listener(settings, stop), stop=stop, registry=registry
            )
        )

    def reason() -> str:
        down = [c.name for c in children if not c.alive] + [loop.name for loop in loops if not loop.healthy]
        return f"down: {', '.join(down)} (restarting)" if down else ""

    server = None
    if settings.health_port is not None:
        server = serve_health(
            host=settings.host, port=settings.health_port, ready=lambda: not reason(), registry=registry, reason=reason
        )
    for child in children:
        child.start()
    for loop in loops:
        loop.start()
    names = [c.name for c in children] + [loop.name for loop in loops]
    say(f"{', '.join(names) or 'nothing'} running; Ctrl-C stops")
    deaths = {loop.name: 0 for loop in loops}
    try:
        while not stop.wait(0.2):
            for child in children:
                message = child.check()
                if message:
                    say(message)
            for loop in loops:
                if loop.deaths != deaths[loop.name]:
                    deaths[loop.name] = loop.deaths
                    say(f"{loop.name} died ({loop.last_error}); restarting with backoff")
    finally:
        stop.set()
        for child in children:
            if child.alive and child.process is not None:
                child.process.send_signal(signal.SIGTERM)
        for child in children:
            child.stop()
        for loop in loops:
            loop.join(10)
        if server is not None:
            server.shutdown()
