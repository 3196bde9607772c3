import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsConfigDict

from systems.common.settings import MlsdSettings, SettingsError

pytestmark = pytest.mark.unit


class DemoSettings(MlsdSettings):
    model_config = SettingsConfigDict(env_prefix="MLSD_DEMO_", extra="forbid")
    api_port: int = 8000


def test_system_prefix_wins_and_shared_prefix_is_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLSD_KAFKA_BOOTSTRAP", "kafka:9092")
    monkeypatch.setenv("MLSD_API_PORT", "1111")  # shared fallback
    monkeypatch.setenv("MLSD_DEMO_API_PORT", "9001")  # system's own wins
    s = DemoSettings()
    assert s.kafka_bootstrap == "kafka:9092"
    assert s.api_port == 9001
    monkeypatch.delenv("MLSD_DEMO_API_PORT")  # no system value: the shared one applies
    assert DemoSettings().api_port == 1111


def test_unknown_keys_are_errors() -> None:
    with pytest.raises(ValidationError):
        MlsdSettings(kafak_bootstrap="typo:1")  # type: ignore[call-arg]


def test_bad_client_name_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLSD_KAFKA_CLIENT", "librdkafka")
    with pytest.raises(ValidationError):
        MlsdSettings()


def test_tracking_uri_defaults_to_sqlite_in_data_dir(tmp_path) -> None:
    s = MlsdSettings(data_dir=tmp_path)
    assert s.tracking_uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert MlsdSettings(mlflow_tracking_uri="http://mlflow:5000").tracking_uri == "http://mlflow:5000"


def test_no_directories_created_until_asked(tmp_path) -> None:
    s = MlsdSettings(data_dir=tmp_path / "state")
    assert not s.data_dir.exists()
    s.ensure_dirs()
    assert s.datasets_dir.is_dir() and s.cache_dir.is_dir()


@pytest.mark.parametrize(
    ("cls_path", "typo", "suggestion"),
    [
        ("systems.recsys.settings:RecsysSettings", "MLSD_RECSYS_SESSION_KEPP", "MLSD_RECSYS_SESSION_KEEP"),
        ("systems.fraud.settings:FraudSettings", "MLSD_FRAUD_API_PROT", "MLSD_FRAUD_API_PORT"),
        ("systems.distributed_training.settings:DistSettings", "MLSD_DIST_DATA_DIRR", "MLSD_DIST_DATA_DIR"),
    ],
)
def test_a_typo_in_a_system_variable_is_an_error_naming_the_closest_setting(
    monkeypatch: pytest.MonkeyPatch, cls_path: str, typo: str, suggestion: str
) -> None:
    import importlib

    module, name = cls_path.split(":")
    cls = getattr(importlib.import_module(module), name)
    monkeypatch.setenv(typo, "x")
    with pytest.raises(SettingsError, match=f"unknown setting {typo}; did you mean {suggestion}"):
        cls()


def test_a_typo_is_a_one_line_cli_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from systems.common.errors import MlsdError

    monkeypatch.setenv("MLSD_DEMO_API_PROT", "1")
    with pytest.raises(MlsdError):  # the CLI turns MlsdError into one readable line and exit 1
        DemoSettings()


def test_a_shared_variable_for_another_system_is_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLSD_RECSYS_RANKER", "lgbm")  # a recsys setting, read by DemoSettings too: ignored
    monkeypatch.setenv("MLSD_DEMO_API_PORT", "9001")
    assert DemoSettings().api_port == 9001


def test_to_env_round_trips_through_a_subprocess_environment(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from systems.fraud.settings import FraudSettings

    s = FraudSettings(data_dir=tmp_path, api_port=9123, publish_predictions=False, warm_until_s=5)
    env = s.to_env()
    assert env["MLSD_FRAUD_API_PORT"] == "9123" and env["MLSD_FRAUD_PUBLISH_PREDICTIONS"] == "false"
    assert "MLSD_FRAUD_DECISION_STORE_URL" not in env  # None stays None
    for key in list(__import__("os").environ):
        if key.startswith("MLSD_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert FraudSettings() == s


def test_scoped_settings_get_private_topics_groups_and_folder(tmp_path) -> None:
    from systems.fraud.settings import FraudSettings

    base = FraudSettings(data_dir=tmp_path)
    a, b = base.scoped(), base.scoped("run1")
    assert b.run_id == "run1" and a.run_id and a.run_id != b.run_id
    assert b.transactions_topic == "transactions-run1" and b.predictions_topic == "predictions-run1"
    assert b.group_id == "fraud-scorer-run1"
    assert a.transactions_topic != b.transactions_topic
    assert b.run_dir("fraud") == tmp_path / "fraud" / "runs" / "run1"
    assert base.run_id is None and base.transactions_topic == "transactions"
    assert b.model_name == base.model_name  # only names that address runtime resources change
