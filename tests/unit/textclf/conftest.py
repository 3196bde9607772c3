"""Fixtures of the textclf unit tests: the tiny corpus (``textclf_support``), its split, fresh settings, and
settings whose dataset already holds every batch as versions (``ingested``)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from systems.mlops_textclf.ingest import CorpusSplit, make_batches
from systems.mlops_textclf.settings import TextclfSettings
from tests.unit.textclf.textclf_support import CONFIG, ingest_all, make_textclf_settings, tiny_corpus


@pytest.fixture()
def corpus() -> pd.DataFrame:
    return tiny_corpus()


@pytest.fixture()
def split(corpus: pd.DataFrame) -> CorpusSplit:
    return make_batches(corpus, CONFIG, golden_fraction=0.1, seed=0)


@pytest.fixture()
def textclf_settings(tmp_path: Path) -> TextclfSettings:
    return make_textclf_settings(tmp_path / ".mlsd")


@pytest.fixture()
def ingested(textclf_settings: TextclfSettings, split: CorpusSplit) -> TextclfSettings:
    """The tiny corpus's golden set written and its three batches ingested: three versions, HEAD the last."""
    ingest_all(split, textclf_settings)
    return textclf_settings
