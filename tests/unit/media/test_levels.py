"""edge_recorder.media.levels: the energy of decoded audio in dBov (RFC 6464's scale)."""

from __future__ import annotations

import numpy as np
import pytest

from edge_recorder.media.levels import SILENCE_DBOV, dbov_of_pcm


def test_dbov_of_pcm() -> None:
    t = np.arange(4800) / 48000
    sine = np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    assert dbov_of_pcm(np.stack([sine, sine], axis=1)) == pytest.approx(-3.01, abs=0.01)
    assert dbov_of_pcm(0.1 * np.stack([sine, sine], axis=1)) == pytest.approx(-23.01, abs=0.01)
    square = np.where(sine >= 0, 0.01, -0.01).astype(np.float32)
    assert dbov_of_pcm(square[:, np.newaxis]) == pytest.approx(-40.0, abs=1e-6)
    assert dbov_of_pcm(np.zeros((960, 2), dtype=np.float32)) == SILENCE_DBOV
    assert dbov_of_pcm(np.zeros((0, 2), dtype=np.float32)) == SILENCE_DBOV
    assert dbov_of_pcm(np.full((960, 2), 1e-9, dtype=np.float32)) == SILENCE_DBOV  # floor
    assert dbov_of_pcm(np.full((960, 2), 4.0, dtype=np.float32)) == 0.0  # over full scale
    assert dbov_of_pcm(np.full((960, 2), np.nan, dtype=np.float32)) == SILENCE_DBOV
