"""Typed, validated method options: a typo or a wrong type in a study YAML must fail loudly."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import pytest

from tokencodec.tokens.compress import METHODS, MethodOptionError, MethodOptions, get_method
from tokencodec.tokens.compress.dart import DART
from tokencodec.tokens.compress.fastv import FastV
from tokencodec.tokens.compress.pyramiddrop import PyramidDrop
from tokencodec.tokens.compress.sparsevlm import SparseVLM

# every method's options and defaults (as before options were typed, except where the defaults were made
# the official code's: divprune compute_dtype, visionzip count_cls, prumerge order/normalize_attention/
# attention/keys, sparsevlm count_recycled)
DEFAULTS = {
    "random": {"content_seed": True},
    "pool-avg": {"at_most": False},
    "pool-resize": {"antialias": True, "at_most": False},
    "divprune": {"compute_dtype": "model"},
    "visionzip": {"contextual_ratio": 10 / 64, "count_cls": True, "merge": "add"},
    "prumerge": {"adaptive": False, "order": "attention", "neighbours": 32, "extra_token": True,
                 "normalize_merge": False, "normalize_attention": False, "attention": "single-head",
                 "keys": "full"},
    "tome": {},
    "fastv": {"layer": 2, "query": "last"},
    "sparsevlm": {"recycle": True, "count_recycled": False, "layers": [2, 6, 15]},
    "pyramiddrop": {"layers": [8, 16, 24], "ratios": [0.5, 0.25, 0.125], "positions": "renumber"},
    "dart": {"layer": 2, "pivots": 4},
    "token-norm": {},
    "dct": {"zone": "rect", "at_most": False},
    "rdo": {"value": "cls-attention", "rate_control": "cbr", "ratios": [], "lambdas": []},
    "scalable": {"order": "coarse-to-fine", "coarse_levels": None},
    "quadtree": {"criterion": "sse", "mode": "partition"},
    "temporal": {"gop": 0, "search": 0, "intra": "all", "threshold": None, "rate_control": "cbr", "ratios": [],
                 "thresholds": []},
    "uniform-frames": {},
    "holitom": {"tau": 0.8, "beta": 0.6, "d": 0.0, "k": 7, "max_window": 1024, "length": "count"},
    "holitom-llm": {"layer": 18},
    "fastvid": {"c": 8, "tau": 0.9, "d": 0.4, "p": 4, "beta": 0.6, "frame_feature": "pooler", "saliency": "pooler",
                "length": "count"},
    "coded": {"inner": "random", "profile": ""},
    "cdpruner": {"relevance": "negated", "theta": None, "normalize": "image", "views": "each",
                 "compute_dtype": "model"},
    "vispruner": {"important_ratio": 0.5, "views": "each", "compute_dtype": "model"},
    "flowcut": {},
}
DEFAULTS["prumerge+"] = DEFAULTS["prumerge"]


def test_every_method_declares_its_options_with_unchanged_defaults():
    assert set(METHODS.names()) == set(DEFAULTS)
    for name in METHODS.names():
        cls = METHODS.get(name)
        assert issubclass(cls.Options, MethodOptions) and cls.Options.__dataclass_params__.frozen
        method = get_method(name)
        assert isinstance(method.options, cls.Options)
        assert method.describe()["options"] == DEFAULTS[name], name


def test_typo_names_the_method_the_option_and_every_allowed_option():
    with pytest.raises(MethodOptionError) as err:
        get_method("visionzip", merg="mean")
    assert str(err.value) == ("method 'visionzip': unknown option 'merg'; allowed: contextual_ratio (float, default "
                              "0.15625), count_cls (bool, default True), merge ('add' | 'mean', default 'add')")
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_every_method_refuses_unknown_options(name):
    with pytest.raises(MethodOptionError, match=rf"^method '{re.escape(name)}': unknown option 'nope'; allowed: "):
        get_method(name, nope=1)


@pytest.mark.parametrize("name, option, value, expected", [
    ("random", "content_seed", 0, "bool"),                 # not truthiness: a bool
    ("random", "content_seed", "false", "bool"),
    ("visionzip", "count_cls", 1, "bool"),
    ("visionzip", "contextual_ratio", "0.5", "float"),
    ("visionzip", "contextual_ratio", True, "float"),
    ("visionzip", "merge", "avg", "'add' | 'mean'"),
    ("prumerge", "neighbours", 3.0, "int"),
    ("prumerge", "neighbours", True, "int"),
    ("prumerge+", "order", "raster ", "'raster' | 'attention'"),
    ("fastv", "query", "first", "'last' | 'all'"),
    ("fastv", "layer", "2", "int"),
    ("pyramiddrop", "layers", 8, r"tuple\[int, ...\]"),
    ("pyramiddrop", "layers", [8, 16.0, 24], r"tuple\[int, ...\]"),
    ("pyramiddrop", "ratios", ["0.5"], r"tuple\[float, ...\]"),
    ("sparsevlm", "recycle", None, "bool"),
    ("dart", "pivots", 2.5, "int"),
])
def test_ill_typed_options_are_refused(name, option, value, expected):
    with pytest.raises(MethodOptionError, match=rf"^method '{name}': option '{option}' must be {expected}, got "):
        get_method(name, **{option: value})


def test_values_are_converted_as_the_hint_says():
    zip_ = get_method("visionzip", contextual_ratio=1)            # an int is a valid float
    assert zip_.options.contextual_ratio == 1.0 and isinstance(zip_.options.contextual_ratio, float)
    pd = get_method("pyramiddrop", layers=[1, 2], ratios=[0.5, 1])  # YAML lists become tuples
    assert pd.options.layers == (1, 2) and pd.options.ratios == (0.5, 1.0) and pd.layers == (1, 2)
    assert isinstance(pd.ratios[1], float)
    assert SparseVLM(layers=[0, 1]).layers == (0, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        zip_.options.merge = "mean"


def test_optional_and_union_hints():
    @dataclass(frozen=True)
    class Opts(MethodOptions):
        cap: int | None = None
        scale: float = 1.0

    assert Opts.parse({"cap": 3}, "m").cap == 3 and Opts.parse({"cap": None}, "m").cap is None
    with pytest.raises(MethodOptionError, match=r"option 'cap' must be int \| None, got 'x'; allowed: "
                                                r"cap \(int \| None, default None\), scale \(float, default 1.0\)"):
        Opts.parse({"cap": "x"}, "m")
    assert MethodOptions.allowed() == "none"


def test_value_checks_keep_their_messages():
    with pytest.raises(MethodOptionError, match=r"method 'fastv': FastV prunes before layer K ≥ 1.*got 0"):
        FastV(layer=0)
    with pytest.raises(MethodOptionError, match="DART needs at least one pivot per side; got 0"):
        DART(pivots=0)
    with pytest.raises(MethodOptionError, match="PyramidDrop needs one ratio per layer; got 2 layers and 3 ratios"):
        PyramidDrop(layers=(1, 2))


def test_adapter_attributes_read_the_options():
    # the adapters read method.layer, .query, .layers, .ratios, .positions, .pivots; the class gives the default
    assert FastV(layer=3, query="all").layer == 3 and FastV(query="all").query == "all"
    assert FastV.layer == 2 and FastV.query == "last"
    assert PyramidDrop(positions="original").positions == "original" and PyramidDrop.ratios == (0.5, 0.25, 0.125)
    assert DART(pivots=2).pivots == 2 and DART.layer == 2
    assert SparseVLM(recycle=False).recycle is False and SparseVLM.layers == (2, 6, 15)


def test_label_and_describe():
    assert get_method("visionzip").label == "visionzip"
    assert get_method("visionzip", merge="mean").label == "visionzip(merge=mean)"
    assert get_method("visionzip", merge="add").label == "visionzip"           # a default is not a change
    assert get_method("prumerge", order="raster", adaptive=True).label == "prumerge(adaptive=True,order=raster)"
    assert get_method("pyramiddrop", layers=[1, 2], ratios=[0.5, 0.25]).label == (
        "pyramiddrop(layers=[1, 2],ratios=[0.5, 0.25])")
    d = get_method("fastv", seed=3, query="all").describe()
    assert d == {"name": "fastv", "options": {"layer": 2, "query": "all"}, "stage": "llm",
                 "paper": FastV.paper, "seed": 3}
