"""The served recommender: the gate's winner, refitted on the whole log, registered in MLflow.

    mlsd recsys train --dataset movielens-100k      # study + gate + refit + register (alias champion)

``train_served`` runs the quality study (``study.py``), takes the model the validation gate chose — our
pipeline or a peer, whichever scored best — refits it on every interaction, saves it, and registers it as
``<model_name>`` with the data version, the gate's scores and the test metrics; the ``champion`` alias moves
to the new version. ``load_served`` resolves ``champion`` and reports that registered version, so
``model_version`` in every answer names something one can look up in the registry.

Requests speak public ids only: ``IdMap`` turns them into indices here and back into ids on the way out.
Every source of the pipeline scores a bare item list, so an anonymous shopper's session items give
personal results (co-visitation and content neighbours of what they browse) instead of the trending list.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from systems.recsys.dataset import IdMap, InteractionLog
from systems.recsys.peers import Scorer
from systems.recsys.protocol import Holdout, serving_stage
from systems.recsys.ranking import MMR_POOL, SOURCES, StackedRanker, mmr_order, prepare_stage
from systems.recsys.study import PIPELINE, StudyConfig, StudyResult, run_study

log = logging.getLogger(__name__)
SERVED_FILE = "served.pkl"


@dataclass
class Answer:
    item_ids: list[Any]
    titles: list[str]
    scores: list[float]
    source: str
    known_user: bool
    history_len: int
    unknown_items: list[Any] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)


@contextmanager
def timed(timings: dict[str, float], name: str) -> Iterator[None]:
    """Add the block's wall time to ``timings[name]`` (ms): the per-stage numbers of every answer."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = timings.get(name, 0.0) + (time.perf_counter() - t0) * 1e3


Clock = Literal["log", "wall"]


@dataclass
class ServedModel:
    """Everything a request needs; pickled as one file and registered as one MLflow model version."""

    kind: str  # "pipeline" or the winning peer's name
    dataset: str
    data_version: str
    users: IdMap
    items: IdMap
    titles: list[str]
    stage: Holdout  # the whole log (fit rows, histories, caches)
    sources: dict[str, Scorer]
    ranker: StackedRanker | None
    popular: np.ndarray  # item_idx by all-time count, the answer for an empty history
    gate: dict[str, Any]
    version: str = "unregistered"
    mmr_lambda: float = 1.0
    item_vecs: np.ndarray | None = None
    """MMR re-ranking of the pipeline's top 50, exactly as the gate measured it (λ = 1: none)."""

    def warm(self) -> ServedModel:
        """Build every request-independent cache now (stage caches, each source's serving state), so that no
        user's request pays for it; ``recommend`` once per kind it can answer."""
        prepare_stage(self.stage)
        for kind in self.kinds():
            self.recommend(user_id=None, session_ids=self.items.ids[:1], k=10, kind=kind)
        return self

    def kinds(self) -> list[str]:
        """What this model can answer with: its own kind and each of its sources (an A/B arm may be one)."""
        return [self.kind] + [n for n in self.sources if n != self.kind]

    def request_time(self, clock: Clock) -> int:
        """The time a request is made at (unix s). ``wall``: now, for a shop whose log is current. ``log``: just
        after the log's last interaction — the replayed datasets end in 1998 and 2003, and the time features
        (trending, days since an item was last seen) must see times like those the ranker learned from, not a
        quarter of a century later."""
        if clock == "wall":
            return int(time.time())
        end = getattr(self, "_log_end", None)
        if end is None:
            end = self._log_end = int(self.stage.fit["ts"].max()) + 1 if len(self.stage.fit) else 0
        return end

    def recommend(
        self,
        *,
        user_id: Any,
        session_ids: Sequence[Any] = (),
        k: int = 10,
        now: int | None = None,
        kind: str | None = None,
    ) -> Answer:
        """Top ``k`` for a user (public id, or None) plus the session's items (public ids; unknown ones are
        returned in ``unknown_items``), at ``now`` (default: the log's clock); ``kind`` picks an A/B arm."""
        timings: dict[str, float] = {}
        with timed(timings, "features"):
            u = self.users.index_of(user_id) if user_id is not None else -1
            sess = self.items.indices(session_ids) if len(session_ids) else np.zeros(0, dtype=np.int64)
            unknown = [s for s, i in zip(session_ids, sess, strict=True) if i < 0]
            base = self.stage.histories[u] if u >= 0 else np.zeros(0, dtype=np.int64)
            hist = np.concatenate([base, sess[sess >= 0]]).astype(np.int64)
            t = int(now if now is not None else self.request_time("log"))
        if len(hist) == 0:
            top = self.popular[:k]
            return Answer(
                self._ids(top), self._titles(top), [0.0] * len(top), "popularity", u >= 0, 0, unknown, timings
            )
        kind = kind or self.kind
        items, scores = self._rank(u, hist, t, k, kind, timings)
        return Answer(self._ids(items), self._titles(items), scores, kind, u >= 0, len(hist), unknown, timings)

    def _rank(
        self, u: int, hist: np.ndarray, t: int, k: int, kind: str, timings: dict[str, float]
    ) -> tuple[np.ndarray, list[float]]:
        if kind == PIPELINE and self.ranker is not None:
            with timed(timings, "candidates"):
                cand, x = self.ranker.build_one(self.sources, self.stage, user=u, t=t, hist=hist)
            with timed(timings, "rank"):
                scores = self.ranker.predict_rows(x)
                order = np.argsort(-scores, kind="stable")  # ties: lower item index first, as ranked_lists
                if self.mmr_lambda < 1.0 and self.item_vecs is not None:
                    top = mmr_order(order[:MMR_POOL], self.item_vecs[cand], self.mmr_lambda)
                    order = np.concatenate([top, order[MMR_POOL:]])
                order = order[:k]
            return cand[order], [float(scores[i]) for i in order]
        with timed(timings, "candidates"):
            sc = self.sources[kind].score_one(hist, t)
            sc[hist] = -np.inf
        with timed(timings, "rank"):
            top = np.argsort(-sc, kind="stable")[:k]
            top = top[np.isfinite(sc[top])]
        return top, [float(sc[i]) for i in top]

    def _ids(self, idx: np.ndarray) -> list[Any]:
        return [self.items.ids[int(i)] for i in idx]

    def _titles(self, idx: np.ndarray) -> list[str]:
        return [self.titles[int(i)] for i in idx]

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / SERVED_FILE
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as fh:
            pickle.dump(self, fh, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(path)
        return path

    @staticmethod
    def load(directory: Path) -> ServedModel:
        import torch

        torch.set_num_threads(1)
        with (directory / SERVED_FILE).open("rb") as fh:
            model: ServedModel = pickle.load(fh)  # our own artefact, written by save() above
        return model


def data_version(log_: InteractionLog) -> str:
    """Content hash of the interaction log (ids, times): the registry tag that says what a model learned from."""
    h = hashlib.sha256()
    inter = log_.interactions
    for col in ("user_idx", "item_idx", "ts"):
        h.update(np.ascontiguousarray(inter[col].to_numpy(np.int64)).tobytes())
    h.update("\n".join(map(str, log_.items.ids)).encode())
    return h.hexdigest()[:16]


def model_from_study(
    res: StudyResult, *, stage: Holdout, sources: dict[str, Scorer], log_: InteractionLog
) -> ServedModel:
    """The gate's winner as a servable model over ``stage`` (its fit rows are the model's view of every user)."""
    counts = np.bincount(stage.fit["item_idx"].to_numpy(), minlength=log_.n_items)
    pipeline = res.winner == PIPELINE
    return ServedModel(
        kind=res.winner,
        dataset=log_.name,
        data_version=data_version(log_),
        users=log_.users,
        items=log_.items,
        titles=[log_.title(i) for i in range(log_.n_items)],
        stage=stage,
        sources=sources,
        ranker=res.ranker if pipeline else None,
        popular=np.argsort(-counts, kind="stable")[:1000],
        gate=res.report["gate"],
        mmr_lambda=res.mmr_lambda if pipeline else 1.0,
        item_vecs=res.item_vecs if pipeline else None,
    )


def fit_served(log_: InteractionLog, cfg: StudyConfig) -> tuple[ServedModel, dict[str, Any]]:
    """Study → gate → the winner refitted on the whole log."""
    from systems.recsys.peers import default_spaces

    res = run_study(log_, cfg)
    full = serving_stage(log_.interactions, n_users=log_.n_users, n_items=log_.n_items)
    needed = [n for n in sorted(res.tuned) if n in SOURCES] if res.winner == PIPELINE else [res.winner]
    spaces = {s.name: s for s in default_spaces(quick=cfg.quick, seed=cfg.seed, n_interactions=len(log_.interactions))}
    sources = {name: spaces[name].make(**res.tuned[name].params).fit(full) for name in needed}
    return model_from_study(res, stage=full, sources=sources, log_=log_), res.report


def experiment_model(res: StudyResult) -> ServedModel:
    """The study's test-stage model, for the A/B simulation: every peer and the ranker fitted on what precedes
    each user's test window, so the held-out interactions are a future the simulated shoppers can click on.
    Every peer is a source, so any of them can be an experiment arm."""
    return model_from_study(res, stage=res.protocol.test, sources=dict(res.test_scorers), log_=res.log)


def register_served(model: ServedModel, report: dict[str, Any], directory: Path, *, name: str, settings: Any) -> str:
    """Save, log to MLflow (params, test metrics, data version), register ``name``, move ``champion``."""
    import mlflow

    from systems.common.registry import CHAMPION, configure, experiment_id, set_alias

    configure(settings)
    model.save(directory)
    served = report["served"]
    with mlflow.start_run(experiment_id=experiment_id(name, settings)) as run:
        mlflow.log_params({"kind": model.kind, "dataset": model.dataset, "data_version": model.data_version})
        mlflow.log_metrics(
            {
                "test_ndcg_at_10": served["ndcg@10"],
                "test_recall_at_10": served["recall@10"],
                "val_ndcg_at_10": report["gate"]["val_ndcg@10"][model.kind],
                "ratio_vs_best_peer": report["ratio"],
            }
        )
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=_Pyfunc(),
            artifacts={"served": str(directory / SERVED_FILE)},
            pip_requirements=[],
            registered_model_name=name,
            tags={"data_version": model.data_version, "dataset": model.dataset, "kind": model.kind},
        )
        log.info("registered %s from run %s", name, run.info.run_id)
    version = str(info.registered_model_version)
    set_alias(name, CHAMPION, version)
    model.version = version
    model.save(directory)  # the local copy knows its registered version too
    return version


def load_champion(name: str, settings: Any) -> ServedModel:
    """Download the ``champion`` version's artefact and load it; ``version`` is the registered number."""
    import mlflow

    from systems.common.registry import CHAMPION, configure, get_alias_version, model_uri

    configure(settings)
    version = get_alias_version(name, CHAMPION)
    if version is None:
        raise LookupError(f"no {CHAMPION} version of {name!r} in the registry; run `mlsd recsys train` first")
    local = Path(mlflow.artifacts.download_artifacts(model_uri(name, CHAMPION)))
    model = ServedModel.load(local / "artifacts")
    model.version = str(version)
    return model


class _Pyfunc:  # the registry needs a python_model; serving reads the pickled artefact directly
    def __new__(cls) -> Any:
        import mlflow.pyfunc

        class Served(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined]
            def predict(self, context: Any, model_input: list[str], params: Any = None) -> list[str]:
                raise NotImplementedError("served through systems.recsys.serve, not pyfunc")

        return Served()
