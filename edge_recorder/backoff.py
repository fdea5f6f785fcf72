"""The one retry delay of the recorder: exponential, capped, with equal jitter.

Every loop that retries a failing peer (the object store today; the webhook
sender and the RTP stream's dial-out are to follow) takes its delay from
:func:`backoff_s`, so "how soon do we try again" is written once.
"""

from __future__ import annotations

import random

__all__ = ["BACKOFF_FIRST_S", "BACKOFF_MAX_S", "backoff_s"]

# First retry delay after a failure, seconds.
BACKOFF_FIRST_S = 0.5
# Longest retry delay, seconds: a returning peer is noticed within this.
BACKOFF_MAX_S = 30.0


def backoff_s(
    attempt: int, rng: random.Random, *, first_s: float = BACKOFF_FIRST_S, max_s: float = BACKOFF_MAX_S
) -> float:
    """Delay before retry number ``attempt`` (1-based): exponential, capped, jittered.

    "Equal jitter": half the exponential step fixed, half random, so retries
    of many sessions spread out but never come back sooner than half the step.

    Args:
        attempt: 1 for the first retry.
        rng: the jitter source (injectable, so tests pick the shortest delay).
        first_s: the step of the first retry.
        max_s: the largest step.
    """
    step = min(max_s, first_s * 2.0 ** max(0, attempt - 1))
    return step / 2 + rng.uniform(0, step / 2)
