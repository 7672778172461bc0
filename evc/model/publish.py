"""`evc model push` and `evc model delete`: a version in the registry, and gone from it.

A push sends every variant under its own tag (``VERSION-ARCH``), then an image index of
them all under the version's tag, so ``docker pull REG/evc/NAME:VERSION`` gets the
puller's arch. Each variant keeps its tag: distribution 2.8's garbage collector deletes
untagged children of an index, and an index can only list manifests already there.

Garbage collection keeps what nodes are declared to run: a version pushed again with
``--force`` moves its tags to new manifests, while the nodes (and the deployments rows
that ``evc fleet converge`` repairs from) still name the old digests. Before collecting,
each digest a current deployment names that no tag holds gets a ``keep-`` tag, and a
``keep-`` tag whose digest no deployment names any more is deleted.
"""

from __future__ import annotations

import json
import time

from evc import db as evcdb
from evc import engine, registry, registry_server
from evc.config import Workspace
from evc.errors import EVCError, UsageError
from evc.model.catalogue import Model, index_of, repository, save, save_index, variants
from evc.model.deployments import current, deployed_on
from evc.names import ModelRef
from evc.options import Options, arg
from evc.progress import SILENT, Progress

# The index's type follows its children's: Docker 20.10 pushes Docker schema 2
# manifests, listed by a Docker manifest list; OCI manifests by an OCI index.
_INDEX_FOR = {
    "application/vnd.docker.distribution.manifest.v2+json":
        "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json": "application/vnd.oci.image.index.v1+json",
}  # fmt: skip


class PushOptions(Options):
    """Push every arch of a built model, then its image index; records digests and sizes."""

    ref: ModelRef = arg(help="NAME:VERSION")


def push(ws: Workspace, options: PushOptions, progress: Progress = SILENT) -> list[Model]:
    """Push every variant, then the index under the version's tag; records each variant's
    digest and size and the index's digest. The catalogue changes only for what was
    pushed: a failure leaves the rest as it was."""
    import docker.errors

    ref = options.ref
    models = variants(ws, ref)
    client = engine.docker_client()
    for model in models:
        try:
            client.images.get(model.image)
        except docker.errors.ImageNotFound:
            raise UsageError(
                f"the image {model.image} of {ref} is not on this builder; rebuild it with "
                f"`evc model build {model.name} --runtime {model.runtime} --version "
                f"{model.version} --arch {model.arch} --force`"
            ) from None
    api = registry.api(ws)
    api.ping()  # a clear "does not answer" / TLS / credentials error before pushing
    registry.login(ws, client)
    repo = repository(models[0].name)
    for model in models:
        image_repo, _, tag = model.image.rpartition(":")
        progress.log(f"pushing {model.image}")
        for line in client.images.push(image_repo, tag=tag, stream=True, decode=True):
            if "error" in line:
                raise EVCError(
                    f"pushing {model.image} failed: {line['error']} (catalogue unchanged)"
                )
        digest = api.manifest_digest(repo, model.tag)
        if digest is None:
            raise EVCError(
                f"the registry has no {model.image} after the push (catalogue unchanged)"
            )
        model.registry_digest = digest
        model.pushed_size = api.image_size(repo, model.tag)
        model.pushed_at = time.time()
        save(ws, model)
        model.in_registry = True
    digest, media_type = push_index(api, repo, models)
    progress.log(f"pushed the index of {ref} ({', '.join(m.arch for m in models)}): {digest}")
    save_index(ws, models[0].name, models[0].version, digest, media_type)
    for model in models:
        model.index_digest = digest
    return models


def push_index(api, repo: str, models: list[Model]) -> tuple[str, str]:
    """An image index of the pushed variants under the version's tag: (digest, type)."""
    children = []
    for model in models:
        child = api.manifest_descriptor(repo, model.tag)
        if child is None or child["digest"] != model.registry_digest:
            raise EVCError(f"the registry's {repo}:{model.tag} is not the one just pushed")
        children.append(child)
    kinds = {c["mediaType"] for c in children}
    if len(kinds) != 1 or next(iter(kinds)) not in _INDEX_FOR:
        raise EVCError(f"cannot list manifests of types {sorted(kinds)} in one image index")
    media_type = _INDEX_FOR[kinds.pop()]
    body = json.dumps({"schemaVersion": 2, "mediaType": media_type, "manifests": children})
    return api.put_manifest(repo, models[0].version, body.encode(), media_type), media_type


def delete(ws: Workspace, ref: str, *, force: bool = False, progress: Progress = SILENT) -> Model:
    """Delete the index and every variant's tag in the registry, collect garbage (their
    blobs), drop the local tags and the rows. Refused while the version is deployed,
    unless ``force``."""
    import docker.errors

    models = variants(ws, ref)
    first = models[0]
    nodes = deployed_on(ws, first.name, first.version)
    if nodes and not force:
        raise UsageError(
            f"{ref} is deployed on {', '.join(nodes)}; undeploy it first "
            f"(`evc model undeploy {first.name} TARGET`) or pass --force"
        )
    client = engine.docker_client()
    repo = repository(first.name)
    if index_of(ws, first.name, first.version) or any(m.registry_digest for m in models):
        api = registry.api(ws)
        deleted = [api.delete(repo, tag) for tag in [first.version] + [m.tag for m in models]]
        if any(deleted):
            progress.log(f"deleted {ref} in the registry; collecting garbage")
            released = {m.registry_digest for m in models if m.registry_digest}
            collect_garbage(ws, client=client, release=released, progress=progress)
    for model in models:
        try:
            client.images.remove(model.image)
        except docker.errors.ImageNotFound:
            pass
    db = evcdb.workspace_db(ws)
    with evcdb.transaction(db):
        db.execute("DELETE FROM models WHERE name = ? AND version = ?", [first.name, first.version])
        db.execute(
            "DELETE FROM model_indexes WHERE name = ? AND version = ?", [first.name, first.version]
        )
    return first


KEEP_PREFIX = "keep-"


def _declared(ws: Workspace, release: set[str]) -> dict[str, set[str]]:
    """Digests current deployments name, by repository (``release``d ones left out)."""
    declared: dict[str, set[str]] = {}
    for row in current(ws):
        name, _, digest = row["image"].partition("@")
        repo = name.split("/", 1)[1] if "/" in name else name
        if digest and digest not in release:
            declared.setdefault(repo, set()).add(digest)
    return declared


def keep_deployed(ws: Workspace, *, release: set[str] = frozenset()) -> dict[str, list[str]]:
    """Tag every declared digest no tag holds (``keep-HEX``) and delete ``keep-`` tags
    nothing declares; returns the keep tags added and removed, by repository."""
    api = registry.api(ws)
    declared = _declared(ws, set(release))
    changes: dict[str, list[str]] = {}
    for repo in sorted(set(declared) | {r for r in api.catalog() if r.startswith("evc/")}):
        tags = {t: api.manifest_digest(repo, t) for t in api.tags(repo)}
        held = {d for t, d in tags.items() if not t.startswith(KEEP_PREFIX)}
        for digest in sorted(declared.get(repo, set()) - held):
            keep = KEEP_PREFIX + digest.removeprefix("sha256:")[:32]
            if keep not in tags and api.manifest_digest(repo, digest) is not None:
                api.tag(repo, digest, keep)
                changes.setdefault(repo, []).append(f"+{keep}")
        for tag, digest in tags.items():
            if tag.startswith(KEEP_PREFIX) and digest not in declared.get(repo, set()):
                if digest not in held:  # deleting by digest would take a real tag too
                    api.delete(repo, tag)
                    changes.setdefault(repo, []).append(f"-{tag}")
    return changes


def collect_garbage(
    ws: Workspace, *, client=None, release: set[str] = frozenset(), progress: Progress = SILENT
) -> str:
    """The registry's garbage collection, keeping every digest a node is declared to run
    (but those in ``release``); the collector's log."""
    for repo, change in keep_deployed(ws, release=release).items():
        progress.detail(f"{repo}: {' '.join(change)}")
    return registry_server.garbage_collect(ws, client=client)
