"""Study files: the format, and every check made before any data is loaded or any model runs."""

import pytest
import yaml

from tokencodec.bench.study import StudyError, load_study, parse_study

STUDY = """
name: tiny
observer: {name: efficientnet-lite0}
data: {dataset: kodak, limit: 2}
pipelines:
  - {codec: jpeg, qualities: [10, 50, 90]}
  - {method: divprune, keep_ratios: [0.5, 0.25]}
  - {codec: webp, qualities: [20], method: random, options: {content_seed: false}, keep_ratios: [0.5]}
metrics: [top1_agreement]
"""


def test_the_format_of_the_issue_parses():
    study = parse_study(yaml.safe_load(STUDY))
    assert [p.label for p in study.pipelines] == ["jpeg", "divprune", "webp+random(content_seed=False)@0.5"]
    assert study.anchor == "jpeg" and study.metrics == ["top1_agreement"]
    assert study.pipelines[0].points() == [{"quality": 90}, {"quality": 50}, {"quality": 10}]


def test_methods_with_keep_ratios_is_shorthand_for_pipelines():
    study = parse_study({"name": "s", "observer": "diagnostic-mllm", "methods": ["random", {"name": "fastv"}],
                         "keep_ratios": [1.0, 0.25]})
    assert [(p.method, p.keep_ratios) for p in study.pipelines] == [("random", (1.0, 0.25)), ("fastv", (1.0, 0.25))]


@pytest.mark.parametrize(("edit", "message"), [
    (lambda s: s + "colour: red\n", r"unknown keys \['colour'\]"),
    (lambda s: s.replace("{codec: jpeg,", "{codek: jpeg,"), r"unknown pipeline keys \['codek'\]"),
    (lambda s: s.replace("codec: jpeg", "codec: jpg"), "unknown codec 'jpg'; known: avif, blockdct"),
    (lambda s: s.replace("[10, 50, 90]", "[0, 50]"), r"jpeg: quality 0 is outside the allowed range \[1, 100\]"),
    (lambda s: s.replace("method: divprune", "method: divprun"), "unknown token method 'divprun'"),
    (lambda s: s.replace("[0.5, 0.25]", "[0.5, 2]"), r"outside the allowed range \(0, 1\]"),
    (lambda s: s.replace("{content_seed: false}", "{content_sed: false}"), "content_sed"),
    (lambda s: s.replace("efficientnet-lite0}", "efficientnet-lite0, sise: 5}"), "unknown option 'sise'"),
    (lambda s: s.replace("efficientnet-lite0", "resnet"), "unknown observer 'resnet'"),
    (lambda s: s.replace("limit: 2", "limt: 2"), "data of observer 'efficientnet-lite0': unknown option 'limt'"),
    (lambda s: s.replace("limit: 2", "limit: 0"), r"limit=0; allowed: an integer >= 1"),
    (lambda s: s.replace("[top1_agreement]", "[acuracy]"), r"unknown metrics \['acuracy'\]"),
    (lambda s: s + "anchor: tome\n", "anchor 'tome' is not among the pipelines"),
    (lambda s: s.replace("method: divprune", "method: visionzip"), "cannot run on this observer|stage|needs"),
    (lambda s: s.replace("name: tiny\n", ""), r"missing keys \['name'\]"),
])
def test_bad_studies_are_refused_before_any_data_is_loaded(tmp_path, monkeypatch, edit, message):
    monkeypatch.setenv("TOKENCODEC_KODAK", str(tmp_path / "no-kodak-here"))  # loading data would fail differently
    path = tmp_path / "s.yaml"
    path.write_text(edit(STUDY))
    with pytest.raises(StudyError, match=message):
        load_study(path)


def test_shipped_studies_load():
    from pathlib import Path

    for path in sorted(Path(__file__).resolve().parents[2].joinpath("studies").glob("*.yaml")):
        assert load_study(path).pipelines, path


def test_the_cli_reports_a_bad_study_in_one_line_with_exit_code_2(tmp_path):
    from typer.testing import CliRunner

    from tokencodec.cli import app

    path = tmp_path / "s.yaml"
    path.write_text(STUDY.replace("method: divprune", "method: divprun"))
    result = CliRunner().invoke(app, ["study", str(path)])
    assert result.exit_code == 2
    assert "unknown token method 'divprun'" in result.output and "Traceback" not in result.output
