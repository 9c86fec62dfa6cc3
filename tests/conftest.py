import os
from pathlib import Path

import numpy as np
import pytest

# TokenBatch checks values (positions in range) on every construction: a host sync each, so off by default
# (tokencodec/tokens/batch.py) and on for the tests; tests/test_host_sync.py turns it off where it counts syncs
os.environ.setdefault("TOKENCODEC_CHECK_VALUES", "1")

SHARED_KODAK = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kodak"


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """A 192×256 natural-photo crop (big enough for MS-SSIM's five scales)."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[40:232, 100:356])


@pytest.fixture(scope="session")
def kodak_dir() -> Path:
    if not (SHARED_KODAK / "kodim01.png").exists():
        pytest.skip("../shared/data/kodak is not beside this checkout")
    return SHARED_KODAK
