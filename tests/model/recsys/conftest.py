"""The session's small trained recsys model (shared with the integration suite through ``shared_data_dir``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from systems.recsys.pipeline import Artifacts, Recommender
from systems.recsys.testing import ensure_small_model


@pytest.fixture(scope="session")
def small_model_dir(shared_data_dir: Path) -> Path:
    return ensure_small_model(shared_data_dir)


@pytest.fixture(scope="session")
def small_quality(small_model_dir: Path) -> dict[str, Any]:
    return json.loads((small_model_dir / "quality.json").read_text())


@pytest.fixture(scope="session")
def small_recommender(small_model_dir: Path) -> Recommender:
    return Recommender(Artifacts.load(small_model_dir))
