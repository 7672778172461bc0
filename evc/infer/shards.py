"""One shard's hand-over, controller side: its dispatch name, its archive, and the
node's answer, checked before anything of it is stored.

The model server's protocol (``model_images/common/evc_infer/serve.py``): the shard
arrives as ``inbox/NAME.tar``; ``outbox/NAME.jsonl`` (or ``NAME.error``) answers it.
NAME is unique per dispatch, so nothing a run left on a node (a shard still queued,
an answer nobody read, a module still waiting after Ctrl-C) can swallow or answer a
later dispatch, even of the same shard.
"""

from __future__ import annotations

import io
import json
import secrets
import tarfile
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, ValidationError

from evc.infer.data import open_item

NonNegative = Annotated[FiniteFloat, Field(ge=0)]


def dispatch_name(job_id: str, index: int, attempt: int) -> str:
    """``{job}-{index}-{attempt}-{random}``: readable, and never the same twice."""
    return f"{job_id}-{index}-{attempt}-{secrets.token_hex(4)}"


def build_archive(path: Path, root: Path, items: list[str], params: dict) -> dict[str, str]:
    """Write the shard as the model server reads it, an uncompressed tar of regular files
    (``shard.json``, then each item's contents, whatever the item is on disk: a link or
    one of two hard links is sent as its contents, never as a link member, which the
    server refuses). Returns {item: why it is not sent} for the items it refused."""
    refused = {}
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        text = json.dumps(params).encode()
        _add(tar, "shard.json", io.BytesIO(text), len(text))
        for item in items:
            opened = open_item(root, item)
            if isinstance(opened, str):
                refused[item] = opened
                continue
            file, size = opened
            with file:
                _add(tar, item, file, size)
    return refused


def _add(tar: tarfile.TarFile, name: str, file, size: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.type = size, 0o644, tarfile.REGTYPE
    tar.addfile(info, file)  # raises when the file ends early: the shard fails, not the job


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class Detection(_Strict):
    label: str
    class_id: int | None = None
    score: Annotated[FiniteFloat, Field(ge=0, le=1)]
    box: tuple[NonNegative, NonNegative, NonNegative, NonNegative]
    keypoints: Any = None  # checked point by point: jobs.keypoints_json


class Record(_Strict):
    """One item's line of a node's answer (the ``results.jsonl`` format)."""

    item: str
    ok: bool
    error: str | None = None
    latency_ms: NonNegative | None = None
    width: Annotated[int, Field(ge=0)] | None = None
    height: Annotated[int, Field(ge=0)] | None = None
    detections: list[Detection] | None = None


def parse_answer(text: str, items: list[str]) -> dict[str, Record]:
    """A node's answer for ``items``, each checked; ValueError saying what is wrong (the
    first bad line, or the items it lacks) when any of it is unusable: a node's answer
    is used whole or not at all, so the shard is re-run on a node that answers right."""
    records = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = Record.model_validate_json(line)
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(map(str, error["loc"]))
            raise ValueError(f"line {n}: {where + ': ' if where else ''}{error['msg']}") from None
        records[record.item] = record
    missing = [i for i in items if i not in records]
    if missing:
        raise ValueError(f"the results lack {len(missing)} of {len(items)} items")
    return {i: records[i] for i in items}
