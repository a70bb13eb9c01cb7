"""The mesh's Ray metrics (``ray.util.metrics``): on Ray's dashboard and its Prometheus endpoint.

Names start ``tollmesh_``; every metric carries the ``mesh`` tag (the mesh's name).

=====================================  =========  ==========================================
``tollmesh_locks_total``               counter    tolls locked in escrow (and paper releases)
``tollmesh_releases_total``            counter    escrows released to their target
``tollmesh_refunds_total``             counter    escrows refunded, tag ``reason``
``tollmesh_rejections_total``          counter    calls refused before a lock, tag ``reason``
``tollmesh_released_micros_total``     counter    micro-USD paid to targets
``tollmesh_locked_micros``             gauge      micro-USD locked in escrow now
``tollmesh_batch_messages``            histogram  messages per coordinator batch
``tollmesh_batch_latency_ms``          histogram  a batch from admission to durable answer
=====================================  =========  ==========================================
"""

from __future__ import annotations

from collections import Counter as Tally
from typing import Optional

_BATCH_SIZES = [1, 10, 100, 1_000, 10_000, 100_000]
_LATENCIES_MS = [0.5, 1, 2, 5, 10, 20, 50, 100, 500, 1_000, 5_000]


class MeshMetrics:
    """Counts a batch's outcomes into Ray metrics (or nowhere, when disabled)."""

    def __init__(self, mesh_name: str, enabled: bool = True) -> None:
        self.enabled = enabled
        self._tags = {"mesh": mesh_name}
        if not enabled:
            return
        from ray.util import metrics

        keys = ("mesh",)
        self.locks = metrics.Counter("tollmesh_locks_total", "tolls locked in escrow", tag_keys=keys)
        self.releases = metrics.Counter("tollmesh_releases_total", "escrows released", tag_keys=keys)
        self.refunds = metrics.Counter("tollmesh_refunds_total", "escrows refunded", tag_keys=keys + ("reason",))
        self.rejections = metrics.Counter("tollmesh_rejections_total", "calls refused", tag_keys=keys + ("reason",))
        self.released_micros = metrics.Counter("tollmesh_released_micros_total", "micro-USD released", tag_keys=keys)
        self.locked_micros = metrics.Gauge("tollmesh_locked_micros", "micro-USD locked now", tag_keys=keys)
        self.batch_messages = metrics.Histogram(
            "tollmesh_batch_messages", "messages per batch", boundaries=_BATCH_SIZES, tag_keys=keys)
        self.batch_latency_ms = metrics.Histogram(
            "tollmesh_batch_latency_ms", "batch latency (ms)", boundaries=_LATENCIES_MS, tag_keys=keys)

    def count_locks(self, count: int) -> None:
        if self.enabled and count:
            self.locks.inc(count, self._tags)

    def count_settled(self, released: int, released_micros: int, refund_reasons: Tally) -> None:
        if not self.enabled:
            return
        if released:
            self.releases.inc(released, self._tags)
        if released_micros:
            self.released_micros.inc(released_micros, self._tags)
        for reason, count in refund_reasons.items():
            self.refunds.inc(count, {**self._tags, "reason": reason or "none"})

    def count_rejections(self, reasons: Tally) -> None:
        if self.enabled:
            for reason, count in reasons.items():
                self.rejections.inc(count, {**self._tags, "reason": reason or "none"})

    def batch(self, messages: int, latency_ms: float, locked_micros: Optional[int]) -> None:
        if not self.enabled:
            return
        self.batch_messages.observe(messages, self._tags)
        self.batch_latency_ms.observe(latency_ms, self._tags)
        if locked_micros is not None:
            self.locked_micros.set(locked_micros, self._tags)
