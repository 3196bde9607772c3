"""Each experiment's quick form runs once per module through the CLI (``mlsd modeling <name> --quick --out``);
the tests then check the qualitative claims its README section makes against the JSON it wrote."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from systems.common.settings import MlsdSettings


@pytest.fixture(scope="module", autouse=True)
def _two_threads() -> Iterator[None]:
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=2):
        yield


@pytest.fixture(scope="module")
def run_quick(
    tmp_path_factory: pytest.TempPathFactory, make_settings: Callable[..., MlsdSettings]
) -> Callable[[str], tuple[dict[str, Any], Path]]:
    """``run_quick(name)`` -> (the experiment's section of the JSON, the PNG path)."""

    def run(name: str) -> tuple[dict[str, Any], Path]:
        from systems.modeling.cli import app

        base = tmp_path_factory.mktemp(f"modeling-{name}")
        settings = make_settings(MlsdSettings, base)  # the session's fetched datasets, a private data dir
        out = base / f"{name}.json"
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLSD_DATA_DIR", str(settings.data_dir))
            result = CliRunner().invoke(app, [name, "--quick", "--out", str(out)])
        assert result.exit_code == 0, result.output + repr(result.exception)
        doc = json.loads(out.read_text())
        png = out.with_suffix(".png")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        section = doc[name]
        assert section["form"] == "quick" and "loadavg_1m" in section["provenance"]["machine"]
        return section, png

    return run
