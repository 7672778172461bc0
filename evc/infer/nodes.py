"""Which nodes a job may use: those the database says run its model version (refused
at once when none does), then those of them found serving it at the recorded digest
(one fleet_status.yml run), so that a re-imaged node or a stopped container is left
out up front with the command that repairs it, rather than burning retries."""

from __future__ import annotations

from evc import fleet
from evc.ansible import run_playbook
from evc.errors import UsageError
from evc.model.deployments import current
from evc.progress import SILENT, Progress


def declared_nodes(
    ws, model: str, version: str, hosts: list[str]
) -> tuple[dict[str, dict], dict[str, str]]:
    """({host: its deployment of MODEL:VERSION}, {other host: why skipped}) as the
    database has them; none is an error."""
    rows = {r["node"]: r for r in current(ws, model) if r["version"] == version}
    skipped = {h: f"{model}:{version} is not deployed here" for h in hosts if h not in rows}
    if len(skipped) == len(hosts):
        raise UsageError(
            f"{model}:{version} runs on none of the target's nodes ({', '.join(hosts)}): "
            f"run `evc model deploy {model}:{version} TARGET` first."
        )
    return {h: rows[h] for h in hosts if h in rows}, skipped


def usable_nodes(
    ws, model: str, version: str, hosts: list[str], progress: Progress = SILENT, *,
    pull: bool = False,
) -> tuple[list[str], dict[str, str]]:  # fmt: skip
    """(nodes that serve MODEL:VERSION, {other node: why it is skipped}); none is an error.
    ``pull``: a node must run the model's puller too."""
    rows, skipped = declared_nodes(ws, model, version, hosts)
    run = run_playbook(ws, "fleet_status.yml", ",".join(rows), extravars=fleet.extravars(ws),
                       progress=progress)  # fmt: skip
    skipped.update(fleet.not_serving(run, model, rows, pull=pull))
    nodes = [h for h in hosts if h not in skipped]
    if not nodes:
        raise UsageError("; ".join(skipped[h] for h in rows) + ".")
    return nodes, skipped
