"""MLflow registry helpers on a real sqlite backend: register, alias, load by alias, the gate."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from systems.common import registry

pytestmark = pytest.mark.integration


def _model(seed: int) -> LogisticRegression:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(200, 3))
    y = (x[:, 0] + 0.1 * rng.normal(size=200) > 0).astype(int)
    return LogisticRegression().fit(x, y)


def test_alias_round_trip_and_gate(settings) -> None:
    registry.configure(settings)
    name = "mlsd-test-model"
    assert registry.get_alias_version(name, registry.CHAMPION) is None

    v1 = registry.log_and_register(_model(1), flavor="sklearn", name=name, metrics={"ap": 0.60}, settings=settings)
    assert registry.promote_if_better(name, v1, metric="ap", candidate_value=0.60, champion_value=None)
    assert registry.get_alias_version(name, registry.CHAMPION) == v1
    assert registry.get_version_metric(name, v1, "ap") == pytest.approx(0.60)

    v2 = registry.log_and_register(_model(2), flavor="sklearn", name=name, metrics={"ap": 0.55}, settings=settings)
    assert v2 != v1
    # Worse candidate: the champion alias stays where it was.
    assert not registry.promote_if_better(name, v2, metric="ap", candidate_value=0.55, champion_value=0.60)
    assert registry.get_alias_version(name, registry.CHAMPION) == v1

    loaded = registry.load_by_alias(name, registry.CHAMPION, flavor="sklearn")
    x = np.array([[2.0, 0.0, 0.0], [-2.0, 0.0, 0.0]])
    np.testing.assert_allclose(loaded.predict_proba(x), _model(1).predict_proba(x))

    # Rollback is moving the alias back.
    registry.set_alias(name, registry.CHAMPION, v2)
    assert registry.get_alias_version(name, registry.CHAMPION) == v2
    # Artifacts live under the data dir, not in the working directory.
    assert any(settings.artifacts_dir.rglob("MLmodel"))


def test_a_missing_alias_is_none_but_an_unreachable_registry_raises(settings, monkeypatch) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    registry.configure(settings)
    assert registry.get_alias_version("no-such-model", registry.CHAMPION) is None
    MlflowClient().create_registered_model("aliasless")
    assert registry.get_alias_version("aliasless", registry.CHAMPION) is None
    # a server that does not answer is not "no champion": callers keep their model and say the registry is down
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    down = settings.model_copy(update={"mlflow_tracking_uri": "http://127.0.0.1:1"})
    registry.configure(down)
    with pytest.raises(MlflowException):
        registry.get_alias_version("aliasless", registry.CHAMPION)
