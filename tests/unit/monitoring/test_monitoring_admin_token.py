"""``mlsd monitoring up`` always has an admin token: the configured one, or one it makes for the data dir."""

from __future__ import annotations

import stat
from pathlib import Path

from systems.monitoring.settings import MonitoringSettings


def test_a_token_is_made_once_private_and_read_by_clients(tmp_path: Path) -> None:
    settings = MonitoringSettings(data_dir=tmp_path)
    assert settings.admin_token is None
    assert settings.with_admin_token().admin_token is None  # a client does not make one
    served = settings.with_admin_token(create=True)
    token = served.admin_token
    assert token is not None and len(token) >= 24
    assert stat.S_IMODE(settings.admin_token_file.stat().st_mode) == 0o600
    assert settings.with_admin_token().admin_token == token  # what `inject` sends
    assert settings.with_admin_token(create=True).admin_token == token  # a restart keeps it


def test_a_configured_token_wins_and_no_file_is_written(tmp_path: Path) -> None:
    settings = MonitoringSettings(data_dir=tmp_path, admin_token="chosen")
    assert settings.with_admin_token(create=True).admin_token == "chosen"
    assert not Path(settings.admin_token_file).exists()
