"""Typed signal requests: one vocabulary, checked when a method registers and when an adapter resolves it."""

import pytest

from tokencodec.adapters.qwen2_vl import QWEN_SIGNALS as QWEN2_VL
from tokencodec.adapters.vision_tower import TOWER_SIGNALS as VISION_TOWER
from tokencodec.tokens.compress.base import SIGNALS, TokenMethod, get_method, register_method
from tokencodec.tokens.signals import Signal, as_signals, resolve_request


def test_a_misspelt_request_fails_when_the_method_registers():
    class Typo(TokenMethod):
        stage = "pre-llm"
        needs = ("cls_atention",)

    with pytest.raises(ValueError, match=r"unknown signals \['cls_atention'\]; known: \['cls_attention'"):
        register_method("_test_typo")(Typo)


def test_signals_are_their_names_and_every_one_is_documented():
    assert Signal.KEYS == "keys" and {"keys": 1}[Signal.KEYS] == 1 and repr(Signal.KEYS) == "'keys'"
    assert set(SIGNALS) == {s.value for s in Signal}
    assert as_signals(["keys", "text_attention"]) == (Signal.KEYS, Signal.TEXT_ATTENTION)


def test_resolve_request_applies_the_no_cls_fallback_or_names_what_is_missing():
    visionzip, fastv = get_method("visionzip"), get_method("fastv")
    assert resolve_request(visionzip, VISION_TOWER, True, "CLIP") == (Signal.CLS_ATTENTION, Signal.KEYS)
    assert resolve_request(visionzip, QWEN2_VL, False, "Qwen2-VL") == (Signal.MEAN_ATTENTION, Signal.KEYS)
    with pytest.raises(ValueError, match=r"needs signals \['text_attention'\]; CLIP supplies"):
        resolve_request(fastv, VISION_TOWER, True, "CLIP")
