import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsConfigDict

from systems.common.settings import MlsdSettings

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
