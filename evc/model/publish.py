"""`evc model push` and `evc model delete`: a version in the registry, and gone from it."""

from __future__ import annotations

import time

from evc import db as evcdb
from evc import engine, registry
from evc.config import Workspace
from evc.errors import EVCError, UsageError
from evc.model.catalogue import Model, get, repository, save
from evc.model.deployments import deployed_on
from evc.names import ModelRef
from evc.options import Options, arg
from evc.progress import SILENT, Progress


class PushOptions(Options):
    """Push a built model to the registry; records its digest and size."""

    ref: ModelRef = arg(help="NAME:VERSION")


def push(ws: Workspace, options: PushOptions, progress: Progress = SILENT) -> Model:
    """Push a built model; records the registry digest and size. Nothing changes on failure."""
    import docker.errors

    ref = options.ref
    model = get(ws, ref)
    client = engine.docker_client()
    try:
        client.images.get(model.image)
    except docker.errors.ImageNotFound:
        raise UsageError(
            f"the image {model.image} of {ref} is not on this builder; rebuild it with "
            f"`evc model build {model.name} --runtime {model.runtime} --version "
            f"{model.version} --force`"
        ) from None
    api = registry.api(ws)
    api.ping()  # a clear "does not answer" / TLS / credentials error before pushing
    registry.login(ws, client)
    repo, _, tag = model.image.rpartition(":")
    progress.log(f"pushing {model.image}")
    for line in client.images.push(repo, tag=tag, stream=True, decode=True):
        if "error" in line:
            raise EVCError(f"pushing {model.image} failed: {line['error']} (catalogue unchanged)")
    digest = api.manifest_digest(repository(model.name), model.tag)
    if digest is None:
        raise EVCError(f"the registry has no {model.image} after the push (catalogue unchanged)")
    model.registry_digest = digest
    model.pushed_size = api.image_size(repository(model.name), model.tag)
    model.pushed_at = time.time()
    save(ws, model)
    model.in_registry = True
    return model


def delete(ws: Workspace, ref: str, *, force: bool = False, progress: Progress = SILENT) -> Model:
    """Delete the tag in the registry, collect garbage, drop the local tag and the row.

    Refused while the version is deployed, unless ``force``.
    """
    import docker.errors

    model = get(ws, ref)
    nodes = deployed_on(ws, model.name, model.version)
    if nodes and not force:
        raise UsageError(
            f"{ref} is deployed on {', '.join(nodes)}; undeploy it first "
            f"(`evc model undeploy {model.name} TARGET`) or pass --force"
        )
    client = engine.docker_client()
    if model.registry_digest:
        api = registry.api(ws)
        if api.delete(repository(model.name), model.tag):
            progress.log(f"deleted {model.image} in the registry; collecting garbage")
            registry.garbage_collect(ws, client=client)
    try:
        client.images.remove(model.image)
    except docker.errors.ImageNotFound:
        pass
    db = evcdb.workspace_db(ws)
    with evcdb.transaction(db):
        db.execute("DELETE FROM models WHERE name = ? AND version = ?", [model.name, model.version])
    return model
