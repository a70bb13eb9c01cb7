"""A Grafana dashboard of the mesh's metrics, to import beside Ray's own dashboards.

Ray's metrics agent on each node exports what the coordinator counts (:mod:`actors.metrics`) to
Prometheus with Ray's ``ray_`` prefix: ``tollmesh_locks_total`` is scraped as
``ray_tollmesh_locks_total``, with the ``mesh`` tag and Ray's own labels (``SessionName``,
``NodeAddress``, ``WorkerId``...). The coordinator runs on the driver's node (the head, for a
``ray job submit``), so the head's endpoint has them all. The dashboard's variables pick the
Prometheus data source and the meshes; its panels: calls per second by outcome, refunds and
rejections by reason, money released per second and locked now, the refund rate, batch size and
batch latency (p50, p99).

>>> import json
>>> board = json.loads(dashboard_json())
>>> board["title"], len(board["panels"])
('tollmesh', 9)
>>> sorted(metric_names(board))[:3]
['ray_tollmesh_batch_latency_ms_bucket', 'ray_tollmesh_batch_messages_count', 'ray_tollmesh_batch_messages_sum']
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["PREFIX", "dashboard", "dashboard_json", "metric_names"]

PREFIX = "ray_"  # Ray's metrics agent puts it before every application metric's name
_MESH = 'mesh=~"$mesh"'
_WINDOW = "$__rate_interval"


def _rate(metric: str, by: str = "mesh") -> str:
    return f"sum by ({by}) (rate({PREFIX}{metric}{{{_MESH}}}[{_WINDOW}]))"


def _quantile(q: float) -> str:
    return (f"histogram_quantile({q}, sum by (le, mesh) "
            f"(rate({PREFIX}tollmesh_batch_latency_ms_bucket{{{_MESH}}}[{_WINDOW}])))")


def _panel(n: int, title: str, targets: list[tuple[str, str]], *, unit: str = "short", kind: str = "timeseries",
           description: str = "") -> dict[str, Any]:
    width = 12 if kind == "timeseries" else 6
    return {
        "id": n + 1, "type": kind, "title": title, "description": description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": width, "x": (n % 2) * 12, "y": (n // 2) * 8},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}} if kind == "timeseries" else {},
        "targets": [{"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend}
                    for i, (expr, legend) in enumerate(targets)],
    }


def _panels() -> list[dict[str, Any]]:
    specs = [
        ("Calls per second, by outcome", [
            (_rate("tollmesh_locks_total"), "locked {{mesh}}"), (_rate("tollmesh_releases_total"), "released {{mesh}}"),
            (_rate("tollmesh_refunds_total"), "refunded {{mesh}}"), (_rate("tollmesh_rejections_total"), "rejected {{mesh}}"),
        ], "reqps", "timeseries", "Escrows locked, released and refunded, and calls refused before a lock."),
        ("Refunds per second, by reason", [(_rate("tollmesh_refunds_total", "mesh, reason"), "{{reason}} {{mesh}}")],
         "reqps", "timeseries", "handler_error, handler_timeout, agent_unavailable, escrow_timeout..."),
        ("Rejections per second, by reason", [(_rate("tollmesh_rejections_total", "mesh, reason"), "{{reason}} {{mesh}}")],
         "reqps", "timeseries", "over_daily_cap, insufficient_funds, unknown_agent, x402_*..."),
        ("USD released per second", [(f"{_rate('tollmesh_released_micros_total')} / 1e6", "{{mesh}}")],
         "currencyUSD", "timeseries", "Tolls paid to targets (micro-USD counted exactly, shown in USD)."),
        ("USD locked in escrow now", [(f"max by (mesh) ({PREFIX}tollmesh_locked_micros{{{_MESH}}}) / 1e6", "{{mesh}}")],
         "currencyUSD", "timeseries", "Held for calls in flight; back to 0 when every call has settled."),
        ("Refund rate", [(f"{_rate('tollmesh_refunds_total')} / {_rate('tollmesh_locks_total')}", "{{mesh}}")],
         "percentunit", "timeseries", "Refunds over locks."),
        ("Batch latency, admission to durable answer", [(_quantile(0.5), "p50 {{mesh}}"), (_quantile(0.99), "p99 {{mesh}}")],
         "ms", "timeseries", "A coordinator batch, from admission until its events are on disk and answered."),
        ("Messages per batch", [(f"{_rate('tollmesh_batch_messages_sum')} / {_rate('tollmesh_batch_messages_count')}",
                                 "mean {{mesh}}")], "short", "timeseries", "How full the coordinator's batches are."),
        ("Calls released (total)", [(f"sum by (mesh) ({PREFIX}tollmesh_releases_total{{{_MESH}}})", "{{mesh}}")],
         "short", "stat", "Since each mesh started."),
    ]
    return [_panel(n, title, targets, unit=unit, kind=kind, description=text)
            for n, (title, targets, unit, kind, text) in enumerate(specs)]


def dashboard() -> dict[str, Any]:
    """The dashboard, as Grafana's JSON model (a dict)."""
    return {
        "uid": "tollmesh", "title": "tollmesh", "tags": ["tollmesh", "ray"], "editable": True,
        "schemaVersion": 39, "version": 1, "time": {"from": "now-1h", "to": "now"}, "refresh": "10s",
        "description": "tollmesh escrow mesh: calls, refunds, rejections, money and batches (Ray metrics, ray_tollmesh_*)",
        "templating": {"list": [
            {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus"},
            {"name": "mesh", "label": "mesh", "type": "query", "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "query": f"label_values({PREFIX}tollmesh_locks_total, mesh)", "refresh": 2, "multi": True,
             "includeAll": True, "current": {"text": "All", "value": "$__all"}},
        ]},
        "panels": _panels(),
    }


def dashboard_json() -> str:
    """The dashboard as the JSON text Grafana imports."""
    return json.dumps(dashboard(), indent=2) + "\n"


def metric_names(board: dict[str, Any]) -> set[str]:
    """Every metric name the dashboard's queries read."""
    exprs = [t["expr"] for panel in board["panels"] for t in panel["targets"]]
    exprs += [v["query"] for v in board["templating"]["list"] if v["type"] == "query"]
    return {name for expr in exprs for name in re.findall(rf"\b({PREFIX}tollmesh_\w+)", expr)}
