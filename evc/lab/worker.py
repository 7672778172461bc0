"""A lab execution node: a container on the lab network that runs ``ansible-runner
worker`` for :func:`evc.ansible.run_playbook` (``worker=``), as a remote execution node
of a larger deployment would (README "Beyond one controller").

Its image carries the controller's ansible-core and ansible-runner (same versions: the
same play gives the same results) and an SSH client, nothing of the workspace: each job
brings the inventory, the pinned host keys and the SSH key through the stream.
"""

from __future__ import annotations

from importlib.metadata import version

from evc import engine
from evc.config import Workspace
from evc.engine import docker_client, engine_errors
from evc.lab.nodes import Nodes
from evc.progress import SILENT, Progress

LABEL = "evc.lab.worker"  # its value: the lab's name


def requirements() -> list[str]:
    return [f"{p}=={version(p)}" for p in ("ansible-core", "ansible-runner")]


def ensure_image(client, progress: Progress = SILENT) -> str:
    """The worker image (built once, then cached by content hash)."""
    from evc.model.build import probe_base
    from evc.model.runtimes import wheelhouse

    base, _ = engine.ensure_base_image(client, progress.log)
    model_base, _ = engine.ensure_image(client, "model-base", base, progress.log)

    def wheels():
        python, libc = probe_base(client, model_base)
        return wheelhouse(requirements(), engine.native_arch(), python, libc, progress)

    tag, _ = engine.ensure_image(
        client, "worker", model_base, progress.log, extra=wheels, extra_key=" ".join(requirements())
    )
    return tag


def container_name(ws: Workspace) -> str:
    return f"evc-{ws.lab_name}-worker"


def start(ws: Workspace, progress: Progress = SILENT) -> list[str]:
    """Start the lab's worker container on the lab network (again if it exists); returns
    the worker command for ``run_playbook(worker=...)``."""
    client = docker_client()
    nodes = Nodes(ws, client)
    image = ensure_image(client, progress)
    name = container_name(ws)
    stop(ws, client)
    with engine_errors(f"starting the lab worker {name}"):
        client.containers.run(
            image, name=name, detach=True, labels={LABEL: nodes.name}, network=nodes.network_name
        )
    return ["docker", "exec", "-i", name, "ansible-runner", "worker"]  # a folder per job


def stop(ws: Workspace, client=None) -> bool:
    """Remove the lab's worker container; False if there was none."""
    import docker.errors

    try:
        (client or docker_client()).containers.get(container_name(ws)).remove(force=True)
    except docker.errors.NotFound:
        return False
    return True
