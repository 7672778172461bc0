"""Which nodes a job may use: those the database says run its model version (refused
at once when none does), then those of them found serving it at the recorded digest,
so that a re-imaged node or a stopped container is left out up front with the command
that repairs it, rather than burning retries.

A pull job first asks the queue: a node whose puller is connected and names this
version, its recorded image and a model server that answers
(:func:`evc.queue.streams.puller_name`) is usable without an ``ansible-playbook`` run.
Only the other nodes (and every node of a push job) are looked at with one
fleet_status.yml run, which also says why one is not usable."""

from __future__ import annotations

from evc import fleet
from evc.ansible import run_playbook
from evc.errors import UsageError
from evc.model.deployments import current
from evc.progress import SILENT, Progress
from evc.queue import server
from evc.queue.streams import puller_name


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


def ready_pullers(ws, model: str, version: str, rows: dict[str, dict]) -> set[str]:
    """The hosts of ``rows`` with a puller connected to the queue that serves MODEL:VERSION
    at the host's recorded image, its model server answering (none when the queue does
    not answer: the caller looks at the nodes instead)."""
    import redis

    if not server.running(ws):
        return set()
    want = {h: puller_name(model, version, r["image"], ready=True) for h, r in rows.items()}
    r = server.admin(ws, retries=0)
    try:
        clients = r.client_list(_type="normal")
    except redis.RedisError:
        return set()
    finally:
        r.close()
    return {c["user"] for c in clients if want.get(c.get("user")) == c.get("name")}


def usable_nodes(
    ws, model: str, version: str, hosts: list[str], progress: Progress = SILENT, *,
    pull: bool = False,
) -> tuple[list[str], dict[str, str]]:  # fmt: skip
    """(nodes that serve MODEL:VERSION, {other node: why it is skipped}); none is an error.
    ``pull``: a node must run the model's puller too."""
    rows, skipped = declared_nodes(ws, model, version, hosts)
    ready = ready_pullers(ws, model, version, rows) if pull else set()
    rest = {h: r for h, r in rows.items() if h not in ready}
    if rest:
        run = run_playbook(ws, "fleet_status.yml", ",".join(rest),
                           extravars=fleet.extravars(ws), progress=progress)  # fmt: skip
        skipped.update(fleet.not_serving(run, model, rest, pull=pull))
    nodes = [h for h in hosts if h not in skipped]
    if not nodes:
        raise UsageError("; ".join(skipped[h] for h in rows) + ".")
    return nodes, skipped
