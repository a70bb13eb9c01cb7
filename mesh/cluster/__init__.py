"""Running tollmesh on a Ray cluster: ``ray up`` configurations and a Grafana dashboard for its metrics.

``tollmesh cluster init`` writes a configuration (:mod:`mesh.cluster.templates`: an on-premise cluster
on Ray's ``local`` provider, or AWS, GCP); ``tollmesh cluster grafana`` writes the dashboard
(:mod:`mesh.cluster.grafana`). Nothing here imports Ray.
"""

from mesh.cluster.grafana import dashboard_json
from mesh.cluster.templates import (
    CLOUD_PROVIDERS,
    CloudNodes,
    Install,
    LocalNodes,
    cloud_cluster,
    local_cluster,
    notes,
    render,
    source_checkout,
)

__all__ = [
    "CLOUD_PROVIDERS",
    "CloudNodes",
    "Install",
    "LocalNodes",
    "cloud_cluster",
    "dashboard_json",
    "local_cluster",
    "notes",
    "render",
    "source_checkout",
]
