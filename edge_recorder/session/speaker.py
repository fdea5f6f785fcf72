"""Who is speaking: the active speaker from audio levels (pure; times are plain seconds).

The receivers feed :meth:`ActiveSpeakerDetector.observe` one level per audio
packet: the RFC 6464 client-to-mixer audio level when the stream carries
``urn:ietf:params:rtp-hdrext:ssrc-audio-level`` (``-level`` of
:func:`edge_recorder.rtp.packet.audio_level`), else the energy of the decoded
audio (:func:`edge_recorder.media.levels.dbov_of_pcm`, measured by the media
worker). The session calls :meth:`~ActiveSpeakerDetector.update`
on a timer (every 100 ms is plenty) and sends a control message only when it
returns a new speaker. No Trio and no clock here: every call takes ``now_s``.

Rules, and why:

* **Smoothed level per peer.** One packet's level says little (a click, a
  plosive, a cough), so each peer keeps a level in dBov that *rises* like a
  first-order filter with time constant ``attack_s`` (default 0.1 s: sustained
  speech at -30 dBov crosses -50 dBov in about 0.16 s, a single loud 20 ms
  packet from silence does not get within 40 dB of it) and *falls* at a fixed
  ``release_db_per_s`` (default 15 dB/s, a peak meter's ballistics: the gaps
  between words, 0.1-0.3 s, cost a few dB, a finished sentence fades out in
  about 1.5 s). Falling linearly in dB rather than exponentially towards the
  -127 floor keeps the release independent of how far away the floor is.
  A packet stands for the audio since the previous one, capped at
  ``max_packet_s``; a peer that sends nothing for longer (muted, Opus DTX
  without the extension, a dead stream) fades as if it sent silence.
* **Speech threshold.** A peer becomes a candidate only at or above
  ``threshold_dbov`` (default -50 dBov): room noise and breathing are below it.
* **Margin.** While the current speaker is speaking (at or above the
  threshold), a challenger must be ``margin_db`` louder (default 6 dB) to take
  over. Two people talking at once, equally loud, therefore never swap.
  When the current speaker is below the threshold, any candidate takes over.
* **Hold.** No switch away from a speaker happens within ``hold_s`` of the
  previous switch (default 1.5 s), whatever the levels: the overlay never
  flickers, two level-driven switches are at least ``hold_s`` apart.
* **Silence keeps the last speaker.** Nobody speaking never switches to
  nobody: the last speaker stays on screen until someone else speaks.
* **Explicit choice wins.** :meth:`~ActiveSpeakerDetector.set_explicit` (the
  SFU's ``recording.setActiveSpeaker``) switches at once, bypassing the hold,
  and locks the choice for ``explicit_hold_s`` (default 3 s) during which
  levels cannot switch away; ``None`` ends the lock early (the current speaker
  stays until levels move it, subject to the hold from the explicit switch).
* **Forgotten peers** (:meth:`~ActiveSpeakerDetector.forget`, the peer's audio
  stream was removed) stop being candidates; if it was the current speaker,
  there is no speaker until the next :meth:`~ActiveSpeakerDetector.update`
  finds someone speaking (no hold then: nobody is on screen to flicker from).

Cost: :meth:`~ActiveSpeakerDetector.observe` is O(1), a dict lookup and a few
float operations on a per-peer slot object; it allocates only when a peer is
first seen. :meth:`~ActiveSpeakerDetector.update` is O(peers).
"""

from __future__ import annotations

import math

from edge_recorder.media.levels import SILENCE_DBOV

__all__ = ["SILENCE_DBOV", "ActiveSpeakerDetector"]

# Typical Opus ptime in WebRTC; what a peer's first packet is taken to cover.
_FIRST_PACKET_S = 0.02


class _Peer:
    """Smoothed level of one peer; mutated in place so observe() allocates nothing."""

    __slots__ = ("level_dbov", "last_s")

    def __init__(self, now_s: float) -> None:
        self.level_dbov = SILENCE_DBOV
        self.last_s = now_s - _FIRST_PACKET_S


class ActiveSpeakerDetector:
    """Chooses the active speaker from per-peer audio levels (rules in the module docstring).

    Args:
        threshold_dbov: smoothed level at or above which a peer is speaking, dBov.
        margin_db: how much louder than a speaking current speaker a challenger
            must be to take over, dB.
        hold_s: minimum time between a switch and the next level-driven one, seconds.
        explicit_hold_s: how long an explicit choice is locked against levels, seconds.
        attack_s: time constant of the smoothed level's rise, seconds.
        release_db_per_s: rate of the smoothed level's fall, dB per second.
        max_packet_s: the longest span one packet's level stands for; silence
            beyond it counts as silence, seconds.

    Raises:
        ValueError: a negative duration or margin, a non-positive attack,
            release or packet span, or a threshold outside [-127, 0].

    Not thread-safe: one task owns a detector.
    """

    def __init__(
        self,
        *,
        threshold_dbov: float = -50.0,
        margin_db: float = 6.0,
        hold_s: float = 1.5,
        explicit_hold_s: float = 3.0,
        attack_s: float = 0.1,
        release_db_per_s: float = 15.0,
        max_packet_s: float = 0.12,
    ) -> None:
        if not SILENCE_DBOV <= threshold_dbov <= 0.0:
            raise ValueError(f"threshold_dbov must be in [-127, 0], got {threshold_dbov}")
        if margin_db < 0 or hold_s < 0 or explicit_hold_s < 0:
            raise ValueError("margin_db, hold_s and explicit_hold_s must be >= 0")
        if attack_s <= 0 or release_db_per_s <= 0 or max_packet_s <= 0:
            raise ValueError("attack_s, release_db_per_s and max_packet_s must be positive")
        self.threshold_dbov = threshold_dbov
        self.margin_db = margin_db
        self.hold_s = hold_s
        self.explicit_hold_s = explicit_hold_s
        self.attack_s = attack_s
        self.release_db_per_s = release_db_per_s
        self.max_packet_s = max_packet_s
        self._peers: dict[str, _Peer] = {}
        self._current: str | None = None
        self._switched_at = -math.inf  # when _current was chosen
        self._explicit_until: float | None = None  # end of an explicit choice's lock
        self._reported: str | None = None  # the last speaker update() returned

    @property
    def current(self) -> str | None:
        """The active speaker's peer id, or None before anyone spoke (or after it was forgotten)."""
        return self._current

    @property
    def peers(self) -> tuple[str, ...]:
        """Peers that have been observed and not forgotten."""
        return tuple(self._peers)

    def observe(self, peer_id: str, level_dbov: float, now_s: float, voice: bool | None = None) -> None:
        """Feed one packet's audio level.

        Args:
            peer_id: who sent it; a new peer becomes a candidate.
            level_dbov: 0 (loudest) to -127 (silence), e.g. ``-level`` from
                :func:`~edge_recorder.rtp.packet.audio_level` or
                :func:`~edge_recorder.media.levels.dbov_of_pcm`; clamped into
                that range, NaN is silence.
            now_s: seconds on the clock ``update`` uses.
            voice: the RFC 6464 V flag. False counts the packet as silence (the
                sender's voice activity detector says it is not speech: music,
                typing); True or None (unknown) uses the level. Pass None when the
                extension was negotiated with ``vad=off`` (RFC 6464 §4), where the
                flag carries nothing.
        """
        peer = self._peers.get(peer_id)
        if peer is None:
            peer = self._peers[peer_id] = _Peer(now_s)
        if voice is False or not level_dbov >= SILENCE_DBOV:  # `not >=` also catches NaN
            level_dbov = SILENCE_DBOV
        elif level_dbov > 0.0:
            level_dbov = 0.0
        span = now_s - peer.last_s
        smoothed = peer.level_dbov
        if span > self.max_packet_s:
            # Nothing arrived for a while: fade over the silent part first.
            smoothed = max(SILENCE_DBOV, smoothed - self.release_db_per_s * (span - self.max_packet_s))
            span = self.max_packet_s
        elif span < 0.0:
            span = 0.0  # out-of-order times: treat as simultaneous
        if level_dbov > smoothed:
            # First-order rise, discretised so any packet rate gives the same time constant.
            smoothed += (level_dbov - smoothed) * span / (self.attack_s + span)
        else:
            smoothed = max(level_dbov, smoothed - self.release_db_per_s * span)
        peer.level_dbov = smoothed
        if now_s > peer.last_s:
            peer.last_s = now_s

    def level(self, peer_id: str, now_s: float) -> float:
        """A peer's smoothed level, as :meth:`update` sees it.

        Args:
            peer_id: the peer.
            now_s: seconds on the clock ``observe`` uses.

        Returns:
            dBov in [-127, 0]; -127 for a peer never observed (or forgotten).
        """
        peer = self._peers.get(peer_id)
        return SILENCE_DBOV if peer is None else self._level_at(peer, now_s)

    def forget(self, peer_id: str) -> bool:
        """Stop considering a peer (its audio stream was removed).

        Args:
            peer_id: the peer; unknown ids are ignored.

        Returns:
            True when it was the current speaker: :attr:`current` is now None
            (``update`` never reports a change to None, so this is the caller's
            cue), and any explicit lock on it is gone.
        """
        self._peers.pop(peer_id, None)
        if peer_id != self._current:
            return False
        self._current = None
        self._reported = None
        self._explicit_until = None
        self._switched_at = -math.inf
        return True

    def set_explicit(self, peer_id: str | None, now_s: float) -> None:
        """Make ``peer_id`` the speaker now and lock it for ``explicit_hold_s``.

        The change is reported by the next :meth:`update` (and :attr:`current`
        shows it at once). Choosing the current speaker again renews the lock.

        Args:
            peer_id: the chosen peer (it need not have been observed), or None
                to end the lock early; None never clears :attr:`current`.
            now_s: seconds on the clock ``update`` uses.
        """
        if peer_id is None:
            self._explicit_until = None
            return
        if peer_id != self._current:
            self._current = peer_id
            self._switched_at = now_s
        self._explicit_until = now_s + self.explicit_hold_s

    def update(self, now_s: float) -> str | None:
        """Apply the rules at ``now_s``.

        Args:
            now_s: seconds on the clock ``observe`` uses.

        Returns:
            The new speaker if :attr:`current` changed to a peer since the
            previous call (by levels or by :meth:`set_explicit`), else None.
        """
        if self._explicit_until is not None:
            if now_s < self._explicit_until:
                return self._report()
            self._explicit_until = None
        current = self._current
        if current is not None and now_s - self._switched_at < self.hold_s:
            return self._report()
        best: str | None = None
        best_level = self.threshold_dbov
        for peer_id, peer in self._peers.items():
            if peer_id == current:
                continue
            level = self._level_at(peer, now_s)
            if level > best_level or (best is None and level == best_level):
                best, best_level = peer_id, level
        if best is None:
            return self._report()
        if current is not None:
            current_level = self.level(current, now_s)
            if current_level >= self.threshold_dbov and best_level < current_level + self.margin_db:
                return self._report()
        self._current = best
        self._switched_at = now_s
        return self._report()

    def next_deadline(self) -> float | None:
        """When levels may next switch the speaker.

        Returns:
            The end of the current hold or explicit lock (possibly already
            past), or None when there is no current speaker (any update may
            pick one).
        """
        if self._current is None:
            return None
        deadline = self._switched_at + self.hold_s
        if self._explicit_until is not None:
            deadline = max(deadline, self._explicit_until)
        return deadline

    def _level_at(self, peer: _Peer, now_s: float) -> float:
        idle = now_s - peer.last_s - self.max_packet_s
        if idle <= 0.0:
            return peer.level_dbov
        return max(SILENCE_DBOV, peer.level_dbov - self.release_db_per_s * idle)

    def _report(self) -> str | None:
        if self._current is None or self._current == self._reported:
            return None
        self._reported = self._current
        return self._current
