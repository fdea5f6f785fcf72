"""A seeded lossy network for RTP tests: drop, duplicate, reorder, delay.

Virtual time only: :meth:`LossyNetwork.transmit` turns (send time, packet) pairs
into (arrival time, packet) pairs sorted by arrival, from a ``random.Random(seed)``
so any failure replays exactly from its seed.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class LossyStats:
    """What the network did.

    Attributes:
        sent: packets offered.
        dropped: packets lost.
        duplicated: extra copies delivered.
        reordered: packets given an extra reordering delay.
    """

    sent: int = 0
    dropped: int = 0
    duplicated: int = 0
    reordered: int = 0


@dataclass
class LossyNetwork(Generic[T]):
    """A one-way path with random loss, duplication, jitter and reordering.

    Attributes:
        seed: seed of the path's ``random.Random``.
        loss: probability that a packet is dropped.
        duplicate: probability that a delivered packet arrives twice.
        reorder: probability that a packet gets an extra delay of up to
            ``reorder_delay_s`` (so later packets overtake it).
        base_delay_s: one-way delay of every packet, in seconds.
        jitter_s: extra uniform delay in [0, jitter_s] per packet, in seconds.
        reorder_delay_s: the most extra delay of a reordered packet, in seconds.
        stats: what happened.
    """

    seed: int
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    base_delay_s: float = 0.02
    jitter_s: float = 0.0
    reorder_delay_s: float = 0.05
    stats: LossyStats = field(default_factory=LossyStats)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def _delay(self) -> float:
        """One packet's delay in seconds."""
        delay = self.base_delay_s + self._rng.uniform(0.0, self.jitter_s)
        if self.reorder and self._rng.random() < self.reorder:
            self.stats.reordered += 1
            delay += self._rng.uniform(0.0, self.reorder_delay_s)
        return delay

    def transmit(self, sent: Iterable[tuple[float, T]]) -> list[tuple[float, T]]:
        """Send items through the path.

        Args:
            sent: (send time in seconds, item) pairs.

        Returns:
            (arrival time, item) pairs sorted by arrival time (stable for ties).
        """
        delivered: list[tuple[float, int, T]] = []
        order = 0
        for send_time, item in sent:
            self.stats.sent += 1
            if self.loss and self._rng.random() < self.loss:
                self.stats.dropped += 1
                continue
            copies = 1
            if self.duplicate and self._rng.random() < self.duplicate:
                self.stats.duplicated += 1
                copies = 2
            for _ in range(copies):
                delivered.append((send_time + self._delay(), order, item))
                order += 1
        delivered.sort(key=lambda d: (d[0], d[1]))
        return [(arrival, item) for arrival, _, item in delivered]
