import warnings

import pytest

from tokencodec.rd import (
    Curve,
    DataIdentity,
    DataMismatchError,
    DataMismatchWarning,
    check_comparable,
    data_identity,
)


def _curve(name: str, config: dict | None) -> Curve:
    return Curve.from_columns(name, {"bpp": [0.5, 1.0], "psnr-rgb": [30.0, 34.0]},
                              provenance={} if config is None else {"config": config})


def _new(name: str, dataset: str, items: list[str], fingerprint: str = "ab12") -> Curve:
    return _curve(name, {"data": {"spec": {"dataset": dataset}, "items": items, "fingerprint": fingerprint}})


KODAK = [f"kodim{i:02d}" for i in range(1, 25)]
EMBEDDED = ["astronaut", "chelsea", "coffee", "rocket"]


def test_identity_of_the_current_layout():
    ident = data_identity(_new("jpeg", "kodak", KODAK, "f00d"))
    assert ident == DataIdentity("kodak", tuple(KODAK), "f00d") and ident.known
    assert str(ident) == "kodak (24 items)"
    spec_only = _curve("x", {"data": {"spec": {"split": "test", "n": 7}, "items": ["a"], "fingerprint": "1"}})
    assert data_identity(spec_only).label == "split=test, n=7"


def test_identity_of_older_codec_and_token_files():
    codec = data_identity(_curve("jpeg", {"dataset": "kodak", "images": KODAK, "limit": None}))
    assert codec == DataIdentity("kodak", tuple(KODAK), "")
    token = data_identity(_curve("random", {"data": {"dataset": "embedded", "limit": 2, "crops": 1},
                                            "samples": ["astronaut/full", "astronaut/tl"]}))
    assert token.label == "embedded" and token.items == ("astronaut/full", "astronaut/tl") and not token.fingerprint


def test_no_provenance_is_an_unknown_identity():
    ident = data_identity(_curve("compressai", None))
    assert ident.label == "unknown" and ident.items == () and not ident.known


def test_different_data_is_refused_with_both_sides_named():
    curves = {"jpeg": _new("jpeg", "kodak", KODAK), "avif": _new("avif", "embedded", EMBEDDED, "cd34")}
    with pytest.raises(DataMismatchError) as info:
        check_comparable(curves)
    message = str(info.value)
    assert "jpeg: kodak (24 items) vs avif: embedded (4 items)" in message and "\n" not in message
    assert isinstance(info.value, ValueError)


def test_allow_mismatch_warns_instead():
    curves = [_new("jpeg", "kodak", KODAK), _new("avif", "embedded", EMBEDDED, "cd34")]
    with pytest.warns(DataMismatchWarning, match="jpeg: kodak"):
        ident = check_comparable(curves, allow_mismatch=True)
    assert ident.label == "kodak"


def test_same_items_with_another_fingerprint_differ():
    a, b = _new("a", "photos", ["x.png", "y.png"], "1111"), _new("b", "photos", ["x.png", "y.png"], "2222")
    with pytest.raises(DataMismatchError, match="fingerprint 1111.*fingerprint 2222"):
        check_comparable([a, b])


def test_same_data_in_any_layout_is_comparable():
    new = _new("jpeg", "kodak", KODAK)
    old = _curve("webp", {"dataset": "kodak", "images": list(reversed(KODAK))})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_comparable({"jpeg.json": new, "webp.json": old}).label == "kodak"


def test_unknown_identities_warn_and_never_fail():
    with pytest.warns(DataMismatchWarning, match="plain.json: the data it was measured on is not recorded"):
        ident = check_comparable({"jpeg.json": _new("jpeg", "kodak", KODAK), "plain.json": _curve("p", None)})
    assert ident.label == "kodak"
    with pytest.warns(DataMismatchWarning):
        assert not check_comparable([_curve("a", None), _curve("b", None)]).known
