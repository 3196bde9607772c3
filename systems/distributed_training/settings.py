"""Settings of the distributed_training system (env prefix ``MLSD_DIST_``, fallback ``MLSD_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import SettingsConfigDict

from systems.common.settings import MlsdSettings


class DistSettings(MlsdSettings):
    """Where this system keeps its runtime state (checkpoints, logs, tokenised corpus)."""

    model_config = SettingsConfigDict(env_prefix="MLSD_DIST_", extra="forbid")

    master_port: int = 29511
    """Default c10d rendezvous port for the simulated two-node run."""

    @property
    def root(self) -> Path:
        """``<data_dir>/distributed_training``: runs, checkpoints and the token file live here."""
        return self.system_dir("distributed_training")

    @property
    def tokens_path(self) -> Path:
        return self.root / "reviews_bytes.npy"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"
