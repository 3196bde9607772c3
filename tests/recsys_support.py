"""Test support: one small trained model per test session, shared by the model and integration suites.

Training the CI preset takes ~30 s; both ``tests/model/recsys`` and ``tests/integration/recsys`` need it, so
the first caller trains into ``<shared_dir>/recsys/model`` and later callers (same session) copy from there.

Imported by those suites' conftests as ``tests.recsys_support`` (pytest's importlib mode makes ``tests`` a
namespace package rooted at the rootdir); it lives here, not in ``systems/``, because only tests use it.
"""

from __future__ import annotations

import fcntl
import json
import shutil
from pathlib import Path

from systems.recsys.data import Split, load_catalogue_and_interactions, slice_users, temporal_split
from systems.recsys.settings import RecsysSettings
from systems.recsys.train import TrainConfig, cpu_debug


def ci_preset() -> TrainConfig:
    cfg = cpu_debug()
    cfg.n_users = 200
    cfg.tower_epochs = 3
    cfg.ranker_epochs = 2
    cfg.lgbm_rounds = 30
    return cfg


def ci_split(settings: RecsysSettings) -> Split:
    """The temporal split the CI preset trains on (same user slice, same cut), recomputed from the raw data.

    Tests check the trained artefacts and the Feast tables against it, so it repeats ``train._run_training``'s
    first lines on purpose: an independent path to the same interactions.
    """
    cfg = ci_preset()
    cat, inter = load_catalogue_and_interactions(settings)
    if cfg.n_users is not None:
        inter = slice_users(inter, cfg.n_users, cfg.seed)
    return temporal_split(inter, test_fraction=cfg.test_fraction, n_users=cat.n_users, n_items=cat.n_items)


def ensure_small_model(shared_dir: Path) -> Path:
    """Train (once) the CI preset with settings under ``shared_dir``; returns its model dir."""
    from systems.recsys.train import train_and_publish

    settings = RecsysSettings(data_dir=shared_dir)
    settings.ensure_dirs()
    lock = shared_dir / "recsys-small.lock"
    with lock.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # pytest-xdist workers: one trains, the others wait
        if not (settings.model_dir / "quality.json").exists():
            train_and_publish(settings, ci_preset())
    return settings.model_dir


def install_model(shared_dir: Path, settings: RecsysSettings) -> dict[str, dict[str, float]]:
    """Copy the shared small model and its Feast parquet tables into ``settings``' data dir; apply Feast there."""
    from systems.recsys.feature_store import apply_and_materialize, data_path

    src = ensure_small_model(shared_dir)
    shared = RecsysSettings(data_dir=shared_dir)
    settings.ensure_dirs()
    shutil.copytree(src, settings.model_dir, dirs_exist_ok=True)
    shutil.copytree(data_path(shared), data_path(settings), dirs_exist_ok=True)
    apply_and_materialize(settings)
    quality: dict[str, dict[str, float]] = json.loads((src / "quality.json").read_text())["quality"]
    return quality
