"""Shared session state: records, indexes, node registrations and leases.

``store`` is the contract (pure rules plus the :class:`StateStore` Protocol),
``memory`` its in-process twin, ``redis`` the Redis adapter and the
:class:`ResilientStateStore` that keeps recordings safe from a Redis outage.
See ``docs/shared-state.md``.
"""

from edge_recorder.state.memory import MemoryStateStore
from edge_recorder.state.store import Record, StateStore

__all__ = ["MemoryStateStore", "Record", "StateStore"]
