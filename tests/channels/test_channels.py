"""Channel models: their statistics (loss rate, mean burst length, bit error count) within confidence
bounds, seeded replay, and parameter checks."""

import numpy as np
import pytest

from tokencodec.channels import CHANNELS, ChannelError
from tokencodec.channels.bit_errors import BitErrors
from tokencodec.channels.erasure import Erasure
from tokencodec.channels.gilbert_elliott import GilbertElliott


def bursts(lost: np.ndarray) -> np.ndarray:
    """Lengths of the runs of consecutive losses."""
    edges = np.diff(np.concatenate([[0], lost.astype(int), [0]]))
    return np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)


def test_registry_names_the_models():
    assert {"erasure", "gilbert-elliott", "bit-errors"} <= set(CHANNELS.names())


@pytest.mark.parametrize("loss", [0.05, 0.3])
def test_iid_erasure_loss_rate_within_its_confidence_bound(loss):
    n = 200_000
    lost = Erasure(loss).lost(n, np.random.default_rng(0))
    assert abs(lost.mean() - loss) < 4 * np.sqrt(loss * (1 - loss) / n)
    # i.i.d.: mean burst length 1 / (1 − loss)
    b = bursts(lost)
    assert abs(b.mean() - 1 / (1 - loss)) < 4 * b.std() / np.sqrt(len(b))


@pytest.mark.parametrize(("loss", "burst"), [(0.1, 4.0), (0.3, 2.5), (0.5, 8.0)])
def test_gilbert_elliott_loss_rate_and_mean_burst_within_confidence_bounds(loss, burst):
    channel = GilbertElliott(loss, burst)
    rng = np.random.default_rng(1)
    runs = [channel.lost(2_000, rng) for _ in range(200)]            # independent stationary realisations
    rates = np.array([r.mean() for r in runs])
    assert abs(rates.mean() - loss) < 4 * rates.std(ddof=1) / np.sqrt(len(rates))
    lengths = np.concatenate([bursts(r) for r in runs])
    assert abs(lengths.mean() - burst) < 4 * lengths.std(ddof=1) / np.sqrt(len(lengths)) + 0.02 * burst
    # longer bursts than i.i.d. at the same loss
    assert lengths.mean() > 1 / (1 - loss)


def test_channels_replay_from_their_seed():
    for channel in (Erasure(0.2), GilbertElliott(0.2, 4)):
        a = channel.lost(500, np.random.default_rng(7))
        assert np.array_equal(a, channel.lost(500, np.random.default_rng(7)))
        assert not np.array_equal(a, channel.lost(500, np.random.default_rng(8)))


def test_bit_errors_flip_a_binomial_number_of_bits():
    ber, size, rng = 1e-3, 1000, np.random.default_rng(2)
    data = bytes(size)
    flips = np.array([sum(bin(b).count("1") for b in BitErrors(ber).corrupt(data, rng)) for _ in range(400)])
    mean = 8 * size * ber
    assert abs(flips.mean() - mean) < 4 * np.sqrt(mean * (1 - ber) / len(flips))
    assert BitErrors(0.0).corrupt(data, rng) == data


def test_bad_parameters_name_what_is_allowed():
    with pytest.raises(ChannelError, match="loss"):
        Erasure(1.5)
    with pytest.raises(ChannelError, match="burst"):
        GilbertElliott(0.1, 0.5)
    with pytest.raises(ChannelError, match="too much loss"):
        GilbertElliott(0.9, 2)
    with pytest.raises(ChannelError, match="ber"):
        BitErrors(0.7)
