"""Payload vs container bytes, parsed from real bitstreams of every codec."""

import numpy as np
import pytest
from skimage import data

from tokencodec.codecs import CODECS, get_codec
from tokencodec.codecs.payload import container_overhead, payload_bytes


@pytest.fixture(scope="module")
def thumb():
    return np.ascontiguousarray(data.astronaut()[100:164, 200:264])


@pytest.mark.parametrize("name", CODECS.names())
def test_payload_is_inside_the_file_and_grows_with_quality(name, thumb):
    codec = get_codec(name)
    lo, hi = codec.quality_range
    sizes = []
    for q in (lo + (hi - lo) // 4, hi - (hi - lo) // 10):
        blob = codec.encode(thumb, q)
        payload = payload_bytes(name, blob)
        assert 0 < payload < len(blob) and container_overhead(name, blob) == len(blob) - payload
        sizes.append(payload)
    assert sizes[1] > sizes[0]


def test_jpeg_payload_is_the_scan_data_between_sos_and_eoi(thumb):
    blob = get_codec("jpeg").encode(thumb, 50)
    sos = blob.index(b"\xff\xda")
    header = int.from_bytes(blob[sos + 2:sos + 4], "big")
    eoi = blob.rindex(b"\xff\xd9")
    assert payload_bytes("jpeg", blob) == eoi - (sos + 2 + header)  # one baseline scan


@pytest.mark.parametrize("name", CODECS.names())
def test_truncated_bitstreams_are_refused(name, thumb):
    blob = get_codec(name).encode(thumb, get_codec(name).quality_range[1])
    with pytest.raises(ValueError, match=name):
        payload_bytes(name, blob[: len(blob) // 3])
