"""The pieces the modeling experiments' claims rest on: exact decomposition, peak detection, Fréchet distance,
and the CLI's one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from systems.common.errors import MlsdError
from systems.modeling.bias_variance import decompose, double_descent
from systems.modeling.experiment import mean_ci, png_path, rounded, run_experiment
from systems.modeling.gan import frechet_distance

pytestmark = pytest.mark.unit


def test_decompose_is_exact_on_known_numbers() -> None:
    y = np.array([0.0, 1.0])
    preds = np.array([[1.0, 1.0], [3.0, 1.0]])  # mean model (2, 1): bias² + noise = (4 + 0) / 2; var = (1 + 0) / 2
    d = decompose(preds, y)
    assert d == {"error": 2.5, "bias2_noise": 2.0, "variance": 0.5}


def test_double_descent_needs_a_rise_then_a_fall() -> None:
    def rows(errors: list[float]) -> list[dict[str, float]]:
        return [{"param": float(i), "error": e} for i, e in enumerate(errors)]

    peak = double_descent(rows([1.0, 0.8, 5.0, 1.2, 0.9]))
    assert peak["appears"] and peak["peak_at"] == 2.0 and peak["before"] == 0.8 and peak["after"] == 0.9
    assert not double_descent(rows([1.0, 0.8, 0.9, 1.0, 1.2]))["appears"]  # a plain U: no second descent
    assert not double_descent(rows([1.0, 1.05, 1.0]))["appears"]  # within the 10 % tolerance


def test_frechet_distance_is_zero_for_the_same_set_and_grows_with_a_shift() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2000, 5))
    assert abs(frechet_distance(a, a)) < 1e-6
    shifted = frechet_distance(a, a + 2.0)  # mean shift of 2 in 5 dimensions: 5 * 4 = 20
    assert shifted == pytest.approx(20.0, rel=1e-6)


def test_mean_ci_claims_no_interval_for_one_seed() -> None:
    assert mean_ci([0.5]) == {"mean": 0.5, "lo": 0.5, "hi": 0.5, "n": 1}
    ci = mean_ci([1.0, 2.0, 3.0])
    assert ci["lo"] < 2.0 < ci["hi"] and ci["n"] == 3


def test_rounded_writes_arrays_as_lists_for_json() -> None:
    out = rounded({"a": np.array([[1.2345678, 2.0]]), "b": np.float32(0.5), "c": [np.int64(3)]}, 3)
    assert out == {"a": [[1.235, 2.0]], "b": 0.5, "c": [3]}
    assert isinstance(out["c"][0], int)


def test_bad_names_and_outputs_are_errors(tmp_path: Path) -> None:
    with pytest.raises(MlsdError, match="unknown experiment"):
        run_experiment("dropout", quick=True, out=tmp_path / "x.json")
    with pytest.raises(MlsdError, match=r"\.json"):
        run_experiment("gan", quick=True, out=tmp_path / "x.csv")
    assert png_path("gan", tmp_path / "r.json") == tmp_path / "r.png"
    assert png_path("gan", None).name == "gan.png"


def test_cli_unknown_experiment_is_one_line_and_exit_1() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "systems.cli", "modeling", "bench", "--only", "regularisation"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "unknown experiment" in lines[0], proc.stderr
