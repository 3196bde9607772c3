"""README numbers are generated from the committed bench JSON: the renderer, and the check over the real READMEs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from systems.common.bench import BenchReport, format_value, lookup, render_readme, report_readmes

pytestmark = pytest.mark.unit

DOC = {"quality": {"xgb": {"ap": 0.71234, "p99.9": 3.0}, "ci": [1.02, 1.31]}, "runs": [{"rps": 2000}]}


def test_lookup_follows_dots_lists_and_keys_with_dots() -> None:
    assert lookup(DOC, "quality.xgb.ap") == 0.71234
    assert lookup(DOC, "quality.xgb.p99.9") == 3.0
    assert lookup(DOC, "runs.0.rps") == 2000
    with pytest.raises(KeyError):
        lookup(DOC, "quality.lgbm.ap")


def test_format_value() -> None:
    assert format_value(0.71234, ".3f") == "0.712"
    assert format_value(12345) == "12,345" and format_value(12345.6) == "12,346"
    assert format_value([1.02, 1.31], ".2f") == "1.02–1.31"
    assert format_value(None) == "—" and format_value(True) == "yes"
    assert format_value(True, "met") == "met" and format_value(False, "met") == "**not met**"


def test_render_rewrites_values_and_reports_each_disagreement() -> None:
    text = "AP <!--m:quality.xgb.ap|.3f-->0.700<!--/m--> and CI <!--m:fraud:quality.ci|.2f-->1.02–1.31<!--/m-->."
    new, mismatches = render_readme(text, lambda system: DOC, "fraud")
    assert new == "AP <!--m:quality.xgb.ap|.3f-->0.712<!--/m--> and CI <!--m:fraud:quality.ci|.2f-->1.02–1.31<!--/m-->."
    assert [(m.key, m.written, m.measured) for m in mismatches] == [("quality.xgb.ap", "0.700", "0.712")]
    again, none = render_readme(new, lambda system: DOC, "fraud")
    assert again == new and none == []


def test_a_number_with_no_measurement_behind_it_is_an_error() -> None:
    with pytest.raises(KeyError, match="not in the fraud bench JSON"):
        render_readme("<!--m:quality.mlp.ap-->0.7<!--/m-->", lambda system: DOC, "fraud")
    with pytest.raises(KeyError, match="names no system"):
        render_readme("<!--m:quality.xgb.ap-->0.7<!--/m-->", lambda system: DOC, None)


def test_bench_report_keeps_other_sections_and_stamps_provenance(tmp_path: Path) -> None:
    out = tmp_path / "systems" / "demo" / "bench" / "demo.json"
    out.parent.mkdir(parents=True)
    out.write_text(json.dumps({"machine": {"loadavg_1m": 1}, "typed": 0.7, "old": {"x": 1}}))  # legacy, untraceable
    first = BenchReport("demo", out=out, command="mlsd demo bench")
    first.section("a", {"x": 1})
    second = BenchReport("demo", out=out, command="mlsd demo bench --only b")
    second.section("b", {"y": 2})
    doc = json.loads(out.read_text())
    assert doc["a"]["x"] == 1 and doc["b"]["y"] == 2
    assert set(doc) == {"system", "a", "b"}, "entries without provenance are dropped"
    assert doc["a"]["provenance"]["command"] == "mlsd demo bench"
    assert doc["b"]["provenance"]["command"] == "mlsd demo bench --only b"
    for section in ("a", "b"):
        prov = doc[section]["provenance"]
        assert prov["git_sha"] and "loadavg_1m" in prov["machine"] and prov["machine"]["measured_at"]


def test_a_readme_that_disagrees_with_its_json_is_found(tmp_path: Path) -> None:
    root = tmp_path
    (root / "systems" / "demo" / "bench").mkdir(parents=True)
    (root / "systems" / "demo" / "bench" / "demo.json").write_text(json.dumps(DOC))
    (root / "systems" / "demo" / "README.md").write_text("AP <!--m:quality.xgb.ap|.2f-->0.75<!--/m-->\n")
    (root / "README.md").write_text("AP <!--m:demo:quality.xgb.ap|.2f-->0.71<!--/m-->\n")
    found = report_readmes(root, write=False)
    assert [(m.readme, m.written) for m in found] == [(Path("systems/demo/README.md"), "0.75")]
    assert report_readmes(root, write=True) and report_readmes(root, write=False) == []


def test_every_committed_readme_number_agrees_with_the_committed_bench_json() -> None:
    mismatches = report_readmes(write=False)
    assert not mismatches, "\n".join(str(m) for m in mismatches) + "\nrun `mlsd bench report`"


def test_every_system_with_a_readme_commits_its_bench_json() -> None:
    from systems.common.bench import REPO_ROOT

    for readme in sorted((REPO_ROOT / "systems").glob("*/README.md")):
        name = readme.parent.name
        json_path = readme.parent / "bench" / f"{name}.json"
        assert json_path.exists(), f"{name} has a README but no {json_path.relative_to(REPO_ROOT)}"
        doc = json.loads(json_path.read_text())
        sections = {k: v for k, v in doc.items() if isinstance(v, dict)}
        assert sections, f"{json_path} has no sections"
        for key, section in sections.items():
            assert "provenance" in section, f"{json_path}: section {key!r} has no provenance (command, sha, load)"
