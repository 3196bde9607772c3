"""Gate: a candidate becomes ``challenger`` only if it passes every check and *significantly* beats the champion.

    mlsd textclf gate RUN_ID                 # checks + McNemar vs champion; registers the version, alias challenger
    mlsd textclf gate RUN_ID --out gate.json # ... and writes the result (a pipeline stage's output)
    mlsd textclf promote                     # challenger -> champion, old champion -> previous (admin, offline)
    mlsd textclf rollback                    # champion -> previous

**Checks** (every one must pass; each is stored with its value and limit):

- *behaviour*: the CheckList suite of ``evaluate.py`` (minimum functionality, invariance, directional), when the
  corpus declares it applies (``CorpusConfig.behavioural_suite``);
- *calibration*: golden-set ECE at most ``gate_max_ece`` (monitoring and the canary read probabilities);
- *latency*: p99 of single-row calls at most ``gate_max_p99_ms`` (the serving budget, measured in-process);
- *slices*: no slice with enough rows loses more than ``gate_max_slice_drop`` accuracy against the champion
  (an aggregate gain bought with one department's loss is not a gain);
- *beats the champion*: on the golden set, accuracy gain at least ``gate_margin`` **and** McNemar's paired test
  (``evaluate.mcnemar``) rejects "equally good" at ``gate_alpha`` with the challenger right on more of the
  discordant rows. A margin alone would promote noise: at 2,000 rows a 0.5-point gain is ten rows, which two
  equally good models trade by chance; the test alone would promote a real but worthless gain. With no
  champion yet, the first model must beat the majority-class baseline the same way, so even the first
  deployment is earned.

**Stored with the version.** Every gated candidate is registered, passed or not: its version carries the tags
``mlsd.gate`` (``passed``/``blocked``), the McNemar counts and p-value, the champion it was compared with, the
data version and (for a retrain) the request id, and the full result is ``gate.json`` in the training run. A
blocked version is the audit trail of what was refused and why, and it answers "was retrain request R acted
on?" like a promoted one; only a passing version gets the ``challenger`` alias.

**Aliases only** (``champion``, ``challenger``, ``previous``): :func:`promote` moves champion to the challenger
and keeps the old champion as ``previous``; :func:`rollback` moves it back. Serving reads the aliases, so a
rollback is one registry write, and the serving process keeps ``previous`` loaded to make it instant.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from systems.common import registry
from systems.common.errors import MlsdError
from systems.mlops_textclf.evaluate import McNemarResult, ModelEvaluation, SetEvaluation, evaluate_model, paired_mcnemar
from systems.mlops_textclf.ingest import DatasetStore, load_golden
from systems.mlops_textclf.settings import TextclfSettings

log = logging.getLogger(__name__)

PREVIOUS = "previous"
GATE_TAG = "mlsd.gate"
"""``passed`` or ``blocked``."""
ROLLOUT_TAG = "mlsd.rollout"
"""``promoted``, ``rolled_back`` or ``superseded``: what the online rollout decided."""
ROLLOUT_REASON_TAG = "mlsd.rollout_reason"
GATE_ARTIFACT = "gate.json"


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    value: float | None
    limit: float | None
    detail: str


@dataclass
class GateResult:
    run_id: str
    passed: bool
    checks: list[Check]
    champion_version: str | None
    """The version compared against (None: the majority-class baseline, there was no champion)."""
    mcnemar: dict[str, Any]
    golden: dict[str, Any]
    champion_golden: dict[str, Any]
    data_version: str
    registered_version: str | None = None
    request_id: str | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def reasons(self) -> list[str]:
        return [f"{c.name}: {c.detail}" for c in self.checks if not c.passed]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"reasons": self.reasons}


class MajorityBaseline:
    """Predicts the majority class of the golden set for every text: the peer a first model must beat."""

    def __init__(self, classes: Sequence[str], positive_share: float) -> None:
        self.classes = (classes[0], classes[1])
        self.threshold = 0.5
        self._p = 1.0 if positive_share >= 0.5 else 0.0

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        return np.full(len(texts), self._p)


def gate_checks(
    candidate: ModelEvaluation,
    reference: SetEvaluation,
    settings: TextclfSettings,
    *,
    champion: SetEvaluation | None = None,
) -> tuple[list[Check], McNemarResult]:
    """Every check of the gate. ``reference`` is the champion's golden evaluation (``champion``), or the majority
    baseline's when there is no champion (then ``champion`` is None and the slice check has nothing to compare
    with)."""
    checks: list[Check] = []
    if settings.corpus.behavioural_suite:
        report = candidate.behaviour
        failing = report.failing()
        shown = "; ".join(f"{f['kind']}: {f.get('text', '')!r}" for f in failing[:3])
        detail = "all cases pass" if report.passed else f"{len(failing)} failing cases: {shown}"
        checks.append(Check("behaviour", report.passed, float(len(failing)), 0.0, detail))
    ece = candidate.golden.metrics.get("ece")
    ece_ok = ece is not None and ece <= settings.gate_max_ece
    checks.append(
        Check("calibration", ece_ok, ece, settings.gate_max_ece, f"golden-set ECE {ece:.4f}" if ece else "no ECE")
    )
    p99_ms = candidate.latency.get("single_p99_us", float("inf")) / 1000.0
    limit = settings.gate_max_p99_ms
    checks.append(Check("latency", p99_ms <= limit, round(p99_ms, 3), limit, f"single-row p99 {p99_ms:.2f} ms"))
    if champion is not None:
        drops = [
            (float(theirs["accuracy"]) - float(mine["accuracy"]), name)
            for name, mine in candidate.golden.slices.items()
            if (theirs := champion.slices.get(name)) and not mine.get("too_few") and not theirs.get("too_few")
        ]
        drop, where = max(drops, default=(0.0, "-"))
        checks.append(
            Check(
                "slices",
                drop <= settings.gate_max_slice_drop,
                round(drop, 6),
                settings.gate_max_slice_drop,
                f"largest slice accuracy drop {drop:+.4f} ({where})",
            )
        )
    test = paired_mcnemar(reference, candidate.golden)
    gain = float(candidate.golden.metrics["accuracy"] or 0.0) - float(reference.metrics["accuracy"] or 0.0)
    ok = test.challenger_better and test.p_value < settings.gate_alpha and gain >= settings.gate_margin
    peer = "champion" if champion is not None else "majority-class baseline"
    detail = (
        f"accuracy {gain:+.4f} vs {peer} (need ≥ {settings.gate_margin:+.4f}); right where it is wrong {test.c}×, "
        f"the reverse {test.b}×, McNemar p = {test.p_value:.3g} (need < {settings.gate_alpha})"
    )
    checks.append(Check("beats_champion", ok, round(gain, 6), settings.gate_margin, detail))
    return checks, test


# ------------------------------------------------------------------------------------------- registry


def load_alias(settings: TextclfSettings, alias: str) -> tuple[Any, str] | None:
    """The classifier an alias of the registered model points at, and its version; None if the alias is unset."""
    from systems.mlops_textclf.train import load_classifier

    registry.configure(settings)
    version = registry.get_alias_version(settings.model_name, alias)
    if version is None:
        return None
    # by the version the alias named, not by the alias again: an alias moved in between must not pair one
    # version's number with another version's model
    return load_classifier(f"models:/{settings.model_name}/{version}"), version


def run_gate(
    settings: TextclfSettings,
    run_id: str,
    *,
    request_id: str | None = None,
    register: bool = True,
    version: str | None = None,
) -> GateResult:
    """Gate the model of training run ``run_id`` against the current champion; register it; alias if it passed.

    ``version`` is the dataset version whose newest batch is scored (default HEAD). Idempotent per run: a run
    that was gated before is not registered twice (its version is returned again, with the stored result).
    """
    import mlflow
    from mlflow import MlflowClient

    from systems.mlops_textclf.evaluate import ScoreCache, evaluate_frame
    from systems.mlops_textclf.train import DATA_VERSION_TAG, load_run_model

    t0 = time.perf_counter()
    registry.configure(settings)
    client = MlflowClient()
    existing = registry.versions_tagged(settings.model_name, RUN_TAG, run_id)
    if existing:
        stored = client.download_artifacts(run_id, GATE_ARTIFACT)
        data = json.loads(open(stored).read())  # noqa: SIM115 - a small local artifact
        data["registered_version"] = existing[-1]
        return _from_dict(data)

    store = DatasetStore.of(settings)
    head = store.head()
    if head is None:
        raise MlsdError("no dataset version yet: run mlsd textclf ingest")
    scored_version = store.resolve(version) if version else head.version_id
    golden = load_golden(settings)
    model, tags = load_run_model(run_id, settings)
    candidate = evaluate_model(model, settings=settings, version=scored_version, golden=golden)
    loaded = load_alias(settings, registry.CHAMPION)
    champion: SetEvaluation | None = None
    if loaded is not None:  # the gate reads the champion's golden-set rows only: its errors pair with the candidate's
        champion_model, champion_version = loaded
        champion = evaluate_frame(
            champion_model, golden, name="golden", scope="fixed golden set", cache=ScoreCache.of(settings)
        )
        reference = champion
    else:
        champion_version = None
        share = float((golden["label"] == model.classes[1]).mean())
        baseline = MajorityBaseline(model.classes, share)
        reference = evaluate_frame(baseline, golden, name="golden", scope="majority-class baseline")
    checks, test = gate_checks(candidate, reference, settings, champion=champion)
    result = GateResult(
        run_id=run_id,
        passed=all(c.passed for c in checks),
        checks=checks,
        champion_version=champion_version,
        mcnemar={"b": test.b, "c": test.c, "p_value": test.p_value, "method": test.method},
        golden=dict(candidate.golden.metrics),
        champion_golden=dict(reference.metrics),
        data_version=tags.get(DATA_VERSION_TAG, "unknown"),
        request_id=request_id,
    )
    result.seconds = round(time.perf_counter() - t0, 3)
    if register:
        client.log_dict(run_id, result.as_dict(), GATE_ARTIFACT)
        version_tags = {
            GATE_TAG: "passed" if result.passed else "blocked",
            RUN_TAG: run_id,
            "mlsd.gate_champion": champion_version or "none",
            "mlsd.gate_p_value": f"{test.p_value:.6g}",
            "mlsd.gate_discordant": f"{test.c}:{test.b}",
            "mlsd.gate_reasons": "; ".join(result.reasons)[:4000] or "none",
            "data_version": result.data_version,
        }
        if request_id is not None:
            version_tags[registry.RETRAIN_REQUEST_TAG] = request_id
            version_tags[registry.RETRAIN_PROMOTED_TAG] = "pending" if result.passed else "false"
        mv = mlflow.register_model(f"runs:/{run_id}/model", settings.model_name, tags=version_tags)
        result.registered_version = str(mv.version)
        if result.passed:
            registry.set_alias(settings.model_name, registry.CHALLENGER, mv.version)
        result.seconds = round(time.perf_counter() - t0, 3)
    log.info("textclf gate run %s: %s %s", run_id, "passed" if result.passed else "blocked", result.reasons)
    return result


RUN_TAG = "mlsd.run_id"
"""The training run a registered version came from: makes gating a run idempotent."""


def _from_dict(data: dict[str, Any]) -> GateResult:
    data = {k: v for k, v in data.items() if k != "reasons"}
    data["checks"] = [Check(**c) for c in data["checks"]]
    return GateResult(**data)


def promote(settings: TextclfSettings, *, reason: str = "manual") -> tuple[str, str | None]:
    """challenger -> champion; the old champion -> previous. Returns (new champion, previous)."""
    from mlflow import MlflowClient

    registry.configure(settings)
    name = settings.model_name
    challenger = registry.get_alias_version(name, registry.CHALLENGER)
    if challenger is None:
        raise MlsdError(f"no challenger of {name} to promote: gate a candidate first (mlsd textclf gate RUN)")
    champion = registry.get_alias_version(name, registry.CHAMPION)
    client = MlflowClient()
    if champion is not None and champion != challenger:
        registry.set_alias(name, PREVIOUS, champion)
        registry.set_version_tags(name, champion, {ROLLOUT_TAG: "superseded"})
    registry.set_alias(name, registry.CHAMPION, challenger)
    client.delete_registered_model_alias(name, registry.CHALLENGER)
    tags = {ROLLOUT_TAG: "promoted", ROLLOUT_REASON_TAG: reason[:4000]}
    if client.get_model_version(name, challenger).tags.get(registry.RETRAIN_REQUEST_TAG):
        tags[registry.RETRAIN_PROMOTED_TAG] = "true"
    registry.set_version_tags(name, challenger, tags)
    log.info("textclf promoted v%s (previous v%s): %s", challenger, champion, reason)
    return challenger, champion


def reject_challenger(settings: TextclfSettings, *, reason: str) -> str | None:
    """A rollout rolled the challenger back: drop its alias and record why. Returns its version (None: none)."""
    from mlflow import MlflowClient

    registry.configure(settings)
    name = settings.model_name
    challenger = registry.get_alias_version(name, registry.CHALLENGER)
    if challenger is None:
        return None
    MlflowClient().delete_registered_model_alias(name, registry.CHALLENGER)
    tags = {ROLLOUT_TAG: "rolled_back", ROLLOUT_REASON_TAG: reason[:4000]}
    if MlflowClient().get_model_version(name, challenger).tags.get(registry.RETRAIN_REQUEST_TAG):
        tags[registry.RETRAIN_PROMOTED_TAG] = "false"
    registry.set_version_tags(name, challenger, tags)
    return challenger


def rollback(settings: TextclfSettings, *, reason: str = "manual") -> tuple[str, str]:
    """champion -> previous (after a promotion went bad). Returns (restored champion, the rolled-back version)."""
    from mlflow import MlflowClient

    registry.configure(settings)
    name = settings.model_name
    previous = registry.get_alias_version(name, PREVIOUS)
    champion = registry.get_alias_version(name, registry.CHAMPION)
    if previous is None or champion is None:
        raise MlsdError(f"nothing to roll back to: {name} has no 'previous' alias (no promotion yet)")
    registry.set_alias(name, registry.CHAMPION, previous)
    MlflowClient().delete_registered_model_alias(name, PREVIOUS)
    registry.set_version_tags(name, champion, {ROLLOUT_TAG: "rolled_back", ROLLOUT_REASON_TAG: reason[:4000]})
    log.info("textclf rolled back v%s -> v%s: %s", champion, previous, reason)
    return previous, champion
