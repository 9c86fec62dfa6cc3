"""Every method still decides what it decided at commit 3a2a81d, before the sync-free rewrite (issue 18).

``tests/expected/method_outputs.json`` was written by ``tests/method_cases.py`` at that commit: per case,
the kept positions, the mask, the sizes, each token's source patches, the features projected on two
fixed directions, and the in-LLM methods' stage plans. Positions, masks, sources and plans must be
equal; sizes and projected features within 2·10⁻⁴ (the JSON keeps 4–5 decimals).
"""

from __future__ import annotations

import json

import pytest
import torch

from tokencodec.tokens.compress import METHODS, get_method

from .method_cases import CASES, EXPECTED, PLANS, describe

EXPECTED_OUTPUTS = json.loads(EXPECTED.read_text(encoding="utf-8"))
TOLERANCE = 2e-4


def test_every_registered_method_has_a_recorded_case():
    assert EXPECTED_OUTPUTS["methods"] == sorted(METHODS.names())
    assert {c.method for c in CASES} == set(METHODS.names())
    assert sorted(EXPECTED_OUTPUTS["outputs"]) == sorted(c.label for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.label for c in CASES])
def test_outputs_equal_the_recorded_ones(case):
    torch.set_num_threads(1)
    got, want = describe(case.run(case.build())), EXPECTED_OUTPUTS["outputs"][case.label]
    assert sorted(got) == sorted(want)
    for key in ("positions", "mask", "source"):
        assert got[key] == want[key], f"{case.label}: {key} changed"
    for key in sorted(set(got) - {"positions", "mask", "source"}):
        a, b = torch.tensor(got[key]), torch.tensor(want[key])
        assert a.shape == b.shape and torch.allclose(a, b, rtol=0, atol=TOLERANCE), f"{case.label}: {key} changed"


def test_plans_equal_the_recorded_ones():
    for name, options, budget in PLANS:
        stages = get_method(name, **options).plan(budget, 576, 32)
        want = EXPECTED_OUTPUTS["plans"][f"{name}{options}{budget}"]
        assert [[s.layer, s.score_layer, s.keep] for s in stages] == want
