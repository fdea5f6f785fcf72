"""Audio levels in dBov (pure): the scale RFC 6464 carries, measured from decoded samples.

The media worker measures the streams whose packets carry no RFC 6464
audio-level extension with :func:`dbov_of_pcm` and reports them to the
session (``levels`` events), where they feed the active-speaker detector
(:mod:`edge_recorder.session.speaker`) like the levels read off the wire.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

__all__ = ["SILENCE_DBOV", "dbov_of_pcm"]

#: RFC 6464 §3: level 127 (-127 dBov) is digital silence, the floor of the scale.
SILENCE_DBOV = -127.0


def dbov_of_pcm(pcm: npt.NDArray[np.floating]) -> float:
    """RMS level of decoded audio, in dBov (the energy fallback for streams without RFC 6464 levels).

    0 dBov is the RMS of a full-scale square wave (ITU-T G.100.1, the reference
    RFC 6464 uses), so a full-scale sine reads -3.01 dBov.

    Args:
        pcm: float samples nominally in [-1, 1], any shape (all channels are
            pooled); NaN counts as silence.

    Returns:
        ``20·log10(rms)`` clamped to [-127, 0]; -127 for an empty or silent array.
    """
    if pcm.size == 0:
        return SILENCE_DBOV
    flat = np.nan_to_num(pcm.astype(np.float64, copy=False).ravel(), nan=0.0, posinf=1.0, neginf=-1.0)
    mean_square = float(np.dot(flat, flat)) / flat.size
    if mean_square <= 0.0:
        return SILENCE_DBOV
    return min(0.0, max(SILENCE_DBOV, 10.0 * math.log10(mean_square)))
