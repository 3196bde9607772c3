"""The session's small trained recsys model (shared with the integration suite through ``shared_data_dir``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from systems.recsys.data import Split
from systems.recsys.pipeline import Artifacts, Recommender
from systems.recsys.settings import RecsysSettings
from tests.recsys_support import ci_split, ensure_small_model


@pytest.fixture(scope="session")
def small_model_dir(shared_data_dir: Path) -> Path:
    return ensure_small_model(shared_data_dir)


@pytest.fixture(scope="session")
def small_quality(small_model_dir: Path) -> dict[str, Any]:
    return json.loads((small_model_dir / "quality.json").read_text())


@pytest.fixture(scope="session")
def small_recommender(small_model_dir: Path) -> Recommender:
    return Recommender(Artifacts.load(small_model_dir))


@pytest.fixture(scope="session")
def small_split(small_model_dir: Path, shared_data_dir: Path) -> Split:
    """The temporal split the small model was trained on, recomputed from the raw interactions."""
    return ci_split(RecsysSettings(data_dir=shared_data_dir))
