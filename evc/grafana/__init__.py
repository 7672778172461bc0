"""Grafana over the workspace database: dashboards as code, provisioning, a local
Grafana container, and push to an existing Grafana.

The dashboards are built in :mod:`evc.grafana.dashboards` and written, with the
provisioning files, by :func:`build`; the copies committed in the repository's
``grafana/`` folder are a build's output. They hold no path of this machine:
Grafana expands ``$EVC_GRAFANA_DB`` (the database file) and
``$EVC_GRAFANA_DASHBOARDS`` (the dashboard folder) from its own environment.
"""

from evc.grafana.provision import BuildOptions, build, datasource, files
from evc.grafana.push import PushResult, push
from evc.grafana.server import UpResult, down, up

__all__ = [
    "BuildOptions",
    "PushResult",
    "UpResult",
    "build",
    "datasource",
    "down",
    "files",
    "push",
    "up",
]
