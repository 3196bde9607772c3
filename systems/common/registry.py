"""Model registry helpers over MLflow: register, alias, load by alias, promote behind a gate.

Deployments never name a version: they load ``models:/<name>@champion``. Moving the ``champion`` alias is
the deploy; moving it back is the rollback. Aliases replaced MLflow's stages (deprecated since 2.9) and we never
use stages.

The default backend is sqlite under the data dir with local artifacts (register ~0.07 s, load by alias
~0.05 s); compose points ``MLSD_MLFLOW_TRACKING_URI`` at an MLflow server on Postgres. ``pip_requirements`` is
always passed, because letting MLflow infer requirements costs 7–12 s per logged model.

mlflow is imported inside the functions: it costs ~2 s and nothing should pay that at import.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from systems.common.settings import MlsdSettings

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"

# Model-version tags that close the monitoring loop: a version trained because monitoring asked carries the
# request's id, so "was request R acted on?" is one registry query (``versions_tagged``), for any process.
RETRAIN_REQUEST_TAG = "mlsd.retrain_request_id"
"""``RetrainRequest.request_id`` the version was trained for: the idempotency key across restarts."""
RETRAIN_INCIDENT_TAG = "mlsd.retrain_incident_id"
"""``RetrainRequest.incident_id`` behind that request."""
RETRAIN_PROMOTED_TAG = "mlsd.retrain_promoted"
"""``"true"``/``"false"``: whether the gate moved ``champion`` to that version (set after the gate ran)."""

_FLAVOR_PACKAGES = {
    "sklearn": ["scikit-learn"],
    "xgboost": ["xgboost-cpu", "scikit-learn"],
    "lightgbm": ["lightgbm", "scikit-learn"],
    "pytorch": ["torch"],
    "pyfunc": [],
}


def configure(settings: MlsdSettings) -> str:
    """Point MLflow's tracking and registry at the configured backend; returns the URI."""
    import mlflow

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    settings.ensure_dirs()
    uri = settings.tracking_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def experiment_id(name: str, settings: MlsdSettings) -> str:
    """Experiment id, created with artifacts under the data dir (not ./mlruns of the working directory)."""
    import mlflow

    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    location = (settings.artifacts_dir / name).resolve().as_uri()
    return str(mlflow.create_experiment(name, artifact_location=location))


def log_and_register(
    model: Any,
    *,
    flavor: str,
    name: str,
    params: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
    pip_requirements: list[str] | None = None,
    settings: MlsdSettings | None = None,
    experiment: str | None = None,
    tags: dict[str, str] | None = None,
    version_tags: dict[str, str] | None = None,
    **log_kwargs: Any,
) -> str:
    """Log ``model`` in a new run with params/metrics, register it as ``name`` and return the version.

    ``tags`` go on the run; ``version_tags`` on the new model version, written by the same registry call that
    creates the version (MLflow 3 passes ``log_model(tags=...)`` to ``create_model_version``, one transaction
    on the SQL store), so no reader ever sees the version without them.
    """
    import importlib

    import mlflow

    settings = settings or MlsdSettings()
    configure(settings)
    flavor_module = importlib.import_module(f"mlflow.{flavor}")
    requirements = pip_requirements if pip_requirements is not None else _FLAVOR_PACKAGES.get(flavor, [])
    experiment = experiment_id(experiment or name, settings)
    with mlflow.start_run(experiment_id=experiment, tags=tags) as run:
        if params:
            mlflow.log_params(params)
        if metrics:
            mlflow.log_metrics(metrics)
        if version_tags:
            log_kwargs["tags"] = version_tags
        info = flavor_module.log_model(
            model, name="model", registered_model_name=name, pip_requirements=requirements, **log_kwargs
        )
        log.info("logged %s run %s", name, run.info.run_id)
    version = info.registered_model_version
    if version is None:  # older servers do not echo the version: look it up
        from mlflow import MlflowClient

        versions = MlflowClient().search_model_versions(f"name='{name}'")
        version = max(int(v.version) for v in versions)
    return str(version)


def set_alias(name: str, alias: str, version: str | int) -> None:
    from mlflow import MlflowClient

    MlflowClient().set_registered_model_alias(name, alias, str(version))


def set_version_tags(name: str, version: str, tags: dict[str, str]) -> None:
    """Set (or overwrite) tags on one model version."""
    from mlflow import MlflowClient

    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)


def _literal(text: str) -> str | None:
    """``text`` as a filter-string literal, or None when it cannot be written as one.

    MLflow's filter parser has no escape sequences (``'it''s'`` stays doubled), but takes single or double
    quotes: a value holding both kinds cannot be expressed and is filtered in Python instead.
    """
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text:
        return f'"{text}"'
    return None


def versions_tagged(name: str, key: str, value: str) -> list[str]:
    """Versions of registered model ``name`` whose model-version tag ``key`` equals ``value``, ascending.

    [] when the model does not exist. The registry filters (``name = '...' AND tags.`key` = '...'``, which the
    SQL store of MLflow 3 evaluates in SQL; keys with dots need the backticks); the result is checked again
    in Python, which also covers what a filter string cannot express and a backend whose ``=`` ignores case.
    """
    from mlflow import MlflowClient

    clauses = []
    name_literal, value_literal = _literal(name), _literal(value)
    if name_literal is not None:
        clauses.append(f"name = {name_literal}")
    if value_literal is not None and "`" not in key:
        clauses.append(f"tags.`{key}` = {value_literal}")
    client = MlflowClient()
    found: set[int] = set()
    token: str | None = None
    while True:
        page = client.search_model_versions(" AND ".join(clauses) or None, page_token=token)
        found.update(int(v.version) for v in page if v.name == name and v.tags.get(key) == value)
        token = page.token
        if not token:
            break
    return [str(v) for v in sorted(found)]


_NOT_FOUND = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"})
"""The error codes MLflow answers for a missing model ("… not found") and a missing alias ("alias … not found")."""


def get_alias_version(name: str, alias: str) -> str | None:
    """The version an alias points at, or None when the model or alias does not exist.

    Any other failure (the registry server unreachable, a broken database) raises: "the registry is down" is
    not "there is no champion", and a caller that keeps its last good model should say which it is.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return str(MlflowClient().get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if exc.error_code in _NOT_FOUND:
            return None
        raise


def model_uri(name: str, alias: str = CHAMPION) -> str:
    return f"models:/{name}@{alias}"


def load_by_alias(name: str, alias: str = CHAMPION, flavor: str = "pyfunc") -> Any:
    """Load the model an alias points at with the given flavor's loader (``sklearn``, ``pytorch``, …)."""
    import importlib

    return importlib.import_module(f"mlflow.{flavor}").load_model(model_uri(name, alias))


def get_version_metric(name: str, version: str, metric: str) -> float | None:
    """A metric of the run that produced a model version (used to compare candidates)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    mv = client.get_model_version(name, version)
    if mv.run_id is None:
        return None
    value = client.get_run(mv.run_id).data.metrics.get(metric)
    return None if value is None else float(value)


def promote_if_better(
    name: str,
    candidate_version: str | int,
    *,
    metric: str,
    candidate_value: float,
    champion_value: float | None,
    alias: str = CHAMPION,
    higher_is_better: bool = True,
    min_delta: float = 0.0,
) -> bool:
    """The evaluation gate: move ``alias`` to the candidate only if it beats the champion on ``metric``.

    Both values must come from the *same* evaluation window; the caller computes them. With no champion yet,
    the candidate is promoted. Returns whether the alias moved.
    """
    if champion_value is None:
        better = True
    elif higher_is_better:
        better = candidate_value > champion_value + min_delta
    else:
        better = candidate_value < champion_value - min_delta
    if better:
        set_alias(name, alias, candidate_version)
    log.info(
        "gate %s %s: candidate v%s %s=%.4f vs champion %s -> %s",
        name,
        alias,
        candidate_version,
        metric,
        candidate_value,
        "none" if champion_value is None else f"{champion_value:.4f}",
        "promoted" if better else "kept champion",
    )
    return better
