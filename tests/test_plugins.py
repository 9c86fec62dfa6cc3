"""Plug-ins: a researcher's own method, codec and observer, named in a study file or on the command line by
entry point (groups tokencodec.methods / .codecs / .observers) or by module:Class.

The test package is installed the way pip installs one, as far as discovery goes: a module and a
``*.dist-info`` folder with ``entry_points.txt`` on ``sys.path`` (``importlib.metadata`` finds entry points
there), so worker processes started with that path find it too."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tokencodec.codecs import CODECS
from tokencodec.observers.registry import OBSERVERS
from tokencodec.registry import UnknownNameError
from tokencodec.tokens.compress import METHODS

SRC = Path(__file__).resolve().parents[1] / "src"

PLUGIN = '''
"""A test plug-in package: one token method, one pixel codec, one observer; nothing registers itself."""
import io

import numpy as np
import torch
from PIL import Image, ImageOps

from tokencodec.codecs.base import Codec
from tokencodec.metrics.machine import agreement, kl_divergence
from tokencodec.observers.base import Observer, Prepared, Runner, Sample, Task
from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress.base import ScoreMethod


class LowestNorm(ScoreMethod):
    """Keeps the tokens of smallest norm (the opposite of token-norm)."""
    stage = "pre-llm"
    paper = "a test plug-in"

    def score(self, batch):
        return -batch.features.float().norm(dim=-1)


class Posterize(Codec):
    """PNG after keeping QUALITY bits per sample: a real, lossy bitstream."""
    quality_range = (1, 8)
    quality_meaning = "bits kept per sample"
    default_qualities = (2, 4, 8)

    def _encode(self, image, quality):
        buf = io.BytesIO()
        ImageOps.posterize(Image.fromarray(image), quality).save(buf, format="PNG")
        return buf.getvalue()

    def _decode(self, data):
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))


class Squares(Task):
    measures = ("agreement", "kl")

    def samples(self, n: int = 3):
        rng = np.random.default_rng(0)
        return [Sample(f"s{i}", f"d{i}", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for i in range(n)]

    def score(self, sample, output, reference):
        return {"agreement": agreement(output, reference), "kl": kl_divergence(output, reference)}


class LinearRunner(Runner):
    rates = ("tokens",)
    stages = ("pre-llm",)

    def __init__(self):
        self.head = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))

    def _tokens(self, image):
        x = torch.from_numpy(image.astype(np.float32)).reshape(16, -1)[:, :8] / 255
        return TokenBatch.from_grid(x[None], (4, 4))

    def _logits(self, batch):
        w = batch.sizes[..., None]
        return ((batch.features * w).sum(1) / w.sum(1)) @ self.head

    def prepare(self, sample):
        tokens = self._tokens(sample.image)
        return Prepared(self._logits(tokens), tokens)

    def run(self, sample, image, method, budget, prepared, pixels_changed):
        tokens = self._tokens(image) if pixels_changed else prepared.tokens
        if method is not None:
            tokens = method(tokens, budget)
        return self._logits(tokens), {"tokens": float(tokens.counts().float().mean())}


class LinearObserver(Observer):
    task_class = Squares
    runner_stages = ("pre-llm",)
    runner_rates = ("tokens",)

    def __init__(self):
        super().__init__(Squares(), LinearRunner())
'''

ENTRY_POINTS = """
[tokencodec.methods]
plug-lowest-norm = tokencodec_testplug:LowestNorm

[tokencodec.codecs]
plug-posterize = tokencodec_testplug:Posterize

[tokencodec.observers]
plug-linear = tokencodec_testplug:LinearObserver
"""

STUDY = """
name: plug
observer: plug-linear
data: {n: 3}
pipelines:
  - {method: random, keep_ratios: [0.25, 0.5, 1.0]}
  - {method: plug-lowest-norm, keep_ratios: [0.25, 0.5, 1.0]}
  - {method: "tokencodec_testplug:LowestNorm", keep_ratios: [0.25, 1.0], name: by-module}
  - {codec: plug-posterize, qualities: [2, 4, 8]}
anchor: random
metrics: [agreement]
"""


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """The test package on sys.path with its dist-info; the registries are restored afterwards."""
    site = tmp_path / "site"
    (site / "tokencodec_testplug").mkdir(parents=True)
    (site / "tokencodec_testplug" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    info = site / "tokencodec_testplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tokencodec-testplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(site))
    for registry in (METHODS, CODECS, OBSERVERS):
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
    return site


def test_entry_points_and_module_class_names_resolve(installed):
    assert "plug-lowest-norm" in METHODS.plugin_names() and "plug-lowest-norm" not in METHODS.names()
    method = METHODS.get("plug-lowest-norm")
    assert method.__name__ == "LowestNorm" and method.name == "plug-lowest-norm"
    assert METHODS.get("tokencodec_testplug:LowestNorm") is method       # one class, two names
    assert "plug-posterize" in CODECS and CODECS.get("plug-posterize")().encode.__self__
    assert OBSERVERS.get("plug-linear").__name__ == "LinearObserver"
    with pytest.raises(UnknownNameError, match=r"'no_such_module:X': the plug-in \(module:Class\) cannot be loaded"):
        METHODS.get("no_such_module:X")
    with pytest.raises(UnknownNameError, match=r"unknown token-compression method 'nope'; known: .*or module:Class"):
        METHODS.get("nope")


def test_a_study_file_runs_plugin_methods_codecs_and_observers(installed, tmp_path):
    import yaml

    from tokencodec.bench.study import parse_study, run_study

    study = parse_study(yaml.safe_load(STUDY), "plug.yaml")
    result = run_study(study, tmp_path / "out")
    curves = result["curves"]
    assert set(curves) == {"random", "plug-lowest-norm", "by-module", "plug-posterize"}
    assert curves["plug-lowest-norm"].column("tokens").tolist() == [4.0, 8.0, 16.0]
    assert curves["plug-posterize"].column("bytes")[0] < curves["plug-posterize"].column("bytes")[-1]
    # keeping the smallest-norm tokens is a different choice from random's: different outputs at 25 %
    assert curves["plug-lowest-norm"].points[0]["kl"] != curves["random"].points[0]["kl"]
    assert (tmp_path / "out" / "report.md").exists()


def test_the_command_line_and_worker_processes_find_the_plugins(installed, tmp_path):
    (tmp_path / "plug.yaml").write_text(STUDY)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(installed)])}
    run = subprocess.run([sys.executable, "-m", "tokencodec", "study", str(tmp_path / "plug.yaml"), "-o",
                          str(tmp_path / "out"), "--executor", "process", "-j", "2", "--json"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["samples"] == 3 and set(summary["results"]) == {"random", "plug-lowest-norm", "by-module",
                                                                   "plug-posterize"}
    assert json.loads(Path(summary["results"]["plug-posterize"]).read_text())["results"]["quality"] == [2, 4, 8]
    from typer.testing import CliRunner

    from tokencodec.cli import app

    codecs = CliRunner().invoke(app, ["codecs", "-c", "jpeg", "-c", "plug-posterize", "-q", "4,8", "--limit", "1",
                                      "-j", "1", "-o", str(tmp_path / "codecs"), "--json"])
    assert codecs.exit_code == 0, codecs.output
    assert [row["test"] for row in json.loads(codecs.stdout)["bd"]] == ["plug-posterize", "plug-posterize"]
