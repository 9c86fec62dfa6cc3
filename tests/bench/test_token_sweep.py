import json
import shutil
import subprocess

import pytest
import torch

from tokencodec.bench.observers import EfficientNetObserver, Encoded, Observer, Sample
from tokencodec.bench.study import StudyError, load_study
from tokencodec.bench.token_report import group_table, retention_table, write_report
from tokencodec.bench.token_sweep import EncodingCache, MethodSpec, run_token_sweep
from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress import BudgetError


class LinearObserver(Observer):
    """A cheap stand-in model: 16 tokens, the head is a fixed linear map of the size-weighted mean."""

    name = "linear"
    measures = ("agreement", "kl")

    def __init__(self):
        self.head = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
        self.encodes = 0

    def samples(self, n: int = 3) -> list[Sample]:
        return [Sample(f"s{i}", f"digest{i}", i) for i in range(n)]

    def encode(self, sample):
        self.encodes += 1
        feats = torch.randn(1, 16, 8, generator=torch.Generator().manual_seed(sample.payload))
        tokens = TokenBatch.from_grid(feats, (4, 4))
        return Encoded(tokens, self._logits(tokens))

    def _logits(self, batch):
        w = batch.sizes[..., None]
        return ((batch.features * w).sum(1) / w.sum(1)) @ self.head

    def judge(self, sample, batch, reference):
        logits = self._logits(batch)
        p, q = reference.log_softmax(-1), logits.log_softmax(-1)
        return {"agreement": float((logits.argmax(-1) == reference.argmax(-1)).float().mean()),
                "kl": float((p.exp() * (p - q)).sum(-1).mean())}


def test_sweep_encodes_each_sample_once_and_writes_curves(tmp_path):
    obs = LinearObserver()
    curves = run_token_sweep(obs, obs.samples(), [MethodSpec("random"), MethodSpec("divprune")],
                             [1.0, 0.5, 0.25], tmp_path, seed=3)
    assert obs.encodes == 3  # 2 methods × 3 ratios reuse one encoding per sample
    rnd = curves["random"]
    assert rnd.column("tokens").tolist() == [16.0, 8.0, 4.0]
    assert rnd.column("agreement")[0] == 1.0 and rnd.column("kl")[0] == pytest.approx(0.0, abs=1e-6)
    raw = json.loads((tmp_path / "divprune.json").read_text())
    assert raw["knob"] == "keep_ratio" and raw["results"]["keep_ratio"] == [1.0, 0.5, 0.25]
    assert set(raw["per_item"]) == {"s0", "s1", "s2"} and raw["provenance"]["seed"] == 3
    assert raw["measures"]["kl"]["higher_is_better"] is False


def test_sweep_resumes_and_disk_cache_is_reused(tmp_path):
    obs = LinearObserver()
    cache_dir = tmp_path / "cache"
    run_token_sweep(obs, obs.samples(2), [MethodSpec("random")], [0.5], tmp_path / "a",
                    cache=EncodingCache(obs, cache_dir))
    run_token_sweep(obs, obs.samples(2), [MethodSpec("random")], [0.5], tmp_path / "a")
    assert obs.encodes == 2  # the second run found every record and encoded nothing
    fresh = LinearObserver()
    run_token_sweep(fresh, fresh.samples(2), [MethodSpec("random")], [0.5, 0.25], tmp_path / "b",
                    cache=EncodingCache(fresh, cache_dir))
    assert fresh.encodes == 0  # encodings came from the disk cache


def test_options_and_seed_are_part_of_the_record_key(tmp_path):
    obs = LinearObserver()
    specs = [MethodSpec("random"), MethodSpec("random", {"content_seed": False})]
    curves = run_token_sweep(obs, obs.samples(2), specs, [0.5], tmp_path)
    assert set(curves) == {"random", "random(content_seed=False)"}
    lines = (tmp_path / "points.jsonl").read_text().splitlines()
    assert len(lines) == 4


def test_bad_plans_are_refused_before_any_work(tmp_path):
    obs = LinearObserver()
    with pytest.raises(KeyError, match="unknown token-compression method 'nope'"):
        run_token_sweep(obs, obs.samples(1), [MethodSpec("nope")], [0.5], tmp_path)
    with pytest.raises(BudgetError, match=r"outside the allowed range \(0, 1\]"):
        run_token_sweep(obs, obs.samples(1), [MethodSpec("random")], [1.5], tmp_path)
    eff = EfficientNetObserver.__new__(EfficientNetObserver)  # no weights needed to check support
    with pytest.raises(ValueError, match="does not run on observer 'efficientnet-lite0'"):
        run_token_sweep(eff, [], [MethodSpec("visionzip")], [0.5], tmp_path)
    assert obs.encodes == 0


def test_efficientnet_observer_on_real_photos(tmp_path):
    obs = EfficientNetObserver()
    samples = obs.samples("embedded", limit=2, crops=1)
    assert [s.id for s in samples] == ["astronaut/full", "astronaut/tl", "chelsea/full", "chelsea/tl"]
    curves = run_token_sweep(obs, samples, [MethodSpec("random"), MethodSpec("pool-avg")], [1.0, 0.125], tmp_path)
    full = curves["random"].points[0]
    assert full["top1_agreement"] == 1.0 and full["kl"] == pytest.approx(0.0, abs=1e-5)
    assert curves["random"].points[1]["tokens"] == 6.0  # round(49 × 0.125)


STUDY = """
name: tiny
observer: {name: efficientnet-lite0}
methods: [random, {name: divprune}]
keep_ratios: [0.5, 0.25]
metrics: [top1_agreement]
"""


@pytest.mark.parametrize(("text", "message"), [
    (STUDY + "colour: red\n", "unknown keys ['colour']"),
    (STUDY.replace("[0.5, 0.25]", "[0.5, 2]"), "keep_ratios must be a list of numbers in (0, 1]"),
    (STUDY + "anchor: tome\n", "anchor 'tome' is not among the methods"),
    (STUDY.replace("name: tiny\n", ""), "missing keys ['name']"),
    ("methods: [", "not valid YAML"),
])
def test_study_errors(tmp_path, text, message):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(StudyError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_study(path)


def test_shipped_studies_load():
    from pathlib import Path

    for path in sorted(Path(__file__).resolve().parents[2].joinpath("studies").glob("*.yaml")):
        study = load_study(path)
        assert study.methods and study.keep_ratios


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    obs = LinearObserver()
    curves = run_token_sweep(obs, obs.samples(4), [MethodSpec("random"), MethodSpec("divprune"),
                                                    MethodSpec("pool-avg")], [1.0, 0.5, 0.25, 0.125], out)
    return write_report(curves, out, "Tiny study", "random", ["agreement", "kl"], description="test",
                        group_of=_parity)


def _parity(sample_id: str) -> str:
    return "even" if int(sample_id[1:]) % 2 == 0 else "odd"


def test_group_table_averages_per_item_values_within_each_group(tmp_path):
    obs = LinearObserver()
    curves = run_token_sweep(obs, obs.samples(4), [MethodSpec("random")], [1.0, 0.25], tmp_path)
    header, rows = group_table(curves, "kl", _parity)
    assert header == ["method", "keep ratio", "even", "odd"]
    items = curves["random"].per_item
    for k, row in enumerate(rows):
        assert row[:2] == ["random", ["1", "0.25"][k]]
        even = (items["s0"]["kl"][k] + items["s2"]["kl"][k]) / 2
        odd = (items["s1"]["kl"][k] + items["s3"]["kl"][k]) / 2
        assert float(row[2]) == pytest.approx(even, abs=1e-3) and float(row[3]) == pytest.approx(odd, abs=1e-3)
    assert float(rows[1][2]) > 0  # pruning to 25 % changes the output: the table is not a copy of the full point


def test_report_files(report):
    md = report["markdown"].read_text()
    assert "## BD metrics against the anchor" in md and "| divprune | agreement |" in md
    page = report["html"].read_text()
    assert page.count("data:image/png;base64,") == 2 and "<table>" in page
    assert "## agreement per group" in md and "| method | keep ratio | even | odd |" in md
    assert "## agreement as a share of the uncompressed model's" in md
    assert "| random | 1.000 |" in md  # the anchor at keep 1 is the uncompressed model
    assert "src=\"http" not in page and "href=" not in page  # self-contained
    assert report["agreement_vs_tokens"].read_bytes()[:4] == b"\x89PNG"


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_html_report_renders_in_headless_chromium(report, tmp_path):
    browser = _chromium()
    assert browser, "the HTML report test needs Debian's chromium (apt-get install chromium)"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}"]
    url = report["html"].resolve().as_uri()
    dom = subprocess.run([browser, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    assert "<h1>Tiny study</h1>" in dom and dom.count("<table>") == 4 and dom.count("<img") == 2
    shot = tmp_path / "page.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1200,2000", url],
                   capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 20_000  # a rendered page with plots, not a blank one


def test_retention_table_divides_by_the_uncompressed_value(tmp_path):
    obs = LinearObserver()
    curves = run_token_sweep(obs, obs.samples(4), [MethodSpec("random"), MethodSpec("divprune")], [1.0, 0.25],
                             tmp_path)
    header, rows = retention_table(curves, "agreement", "random")
    assert header == ["method", "keep 1", "keep 0.25"]
    full = curves["random"].points[0]["agreement"]
    assert rows[1] == ["divprune", f"{curves['divprune'].points[0]['agreement'] / full:.3f}",
                       f"{curves['divprune'].points[1]['agreement'] / full:.3f}"]
    assert retention_table(curves, "kl", "random") is None  # lower is better: no share of it is "kept"
