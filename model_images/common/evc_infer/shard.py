"""One shard archive of ``evc-infer --serve``: checked, extracted with bounds, and run.

The archive is an uncompressed tar of ``shard.json`` and the items. Anything else
(compression, links, devices, unsafe or repeated names, more entries or bytes than
model.yaml ``limits`` allow, a shard.json that is not exactly the parameters) makes the
shard unusable: a UsageError that names the problem, raised before any item is written,
so a hostile archive cannot fill the node's disk.
"""

import errno
import json
import os
import shutil
import stat
import tarfile
from pathlib import Path, PurePosixPath

from evc_infer import UsageError, one_line
from evc_infer.home import resolve_params
from evc_infer.runner import infer_one

PARAMS_FILE = "shard.json"
PARAMS_MAX_BYTES = 64 * 1024
PARAM_KEYS = ("conf", "iou", "imgsz")
_KINDS = {
    tarfile.SYMTYPE: "a symlink",
    tarfile.LNKTYPE: "a hard link",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO",
}


def _name(member: tarfile.TarInfo) -> str:
    """The member's normalised relative name; UsageError for one that could leave the folder."""
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise UsageError(f"unsafe path in the shard archive: {member.name!r}")
    return path.as_posix()


def read_members(tar: tarfile.TarFile, limits: dict) -> dict[str, tarfile.TarInfo]:
    """Regular files by normalised name, read entry by entry within ``limits``."""
    files: dict[str, tarfile.TarInfo] = {}
    total = 0
    for count, member in enumerate(tar, 1):
        if count > limits["shard_entries"]:
            raise UsageError(f"the shard archive has more than {limits['shard_entries']} entries")
        name = _name(member)
        if member.isdir():
            continue
        if not member.isfile():
            kind = _KINDS.get(member.type, f"of tar type {member.type!r}")
            raise UsageError(f"not a regular file in the shard archive: {name} is {kind}")
        if name in files:
            raise UsageError(f"the shard archive holds {name} twice")
        total += member.size
        if total > limits["shard_bytes"]:
            raise UsageError(
                f"the shard archive's files add up to more than {limits['shard_bytes']} bytes"
            )
        files[name] = member
    return files


def read_params(tar: tarfile.TarFile, member: tarfile.TarInfo | None, config: dict) -> dict:
    """conf/iou/imgsz from shard.json: an object of those keys only, each null or in range."""
    if member is None:
        raise UsageError(f"the shard archive has no {PARAMS_FILE}")
    if member.size > PARAMS_MAX_BYTES:
        raise UsageError(f"{PARAMS_FILE} is {member.size} bytes, above {PARAMS_MAX_BYTES}")
    try:
        given = json.loads(tar.extractfile(member).read().decode())
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise UsageError(f"{PARAMS_FILE} is not valid JSON: {one_line(exc)}") from None
    if not isinstance(given, dict):
        raise UsageError(f"{PARAMS_FILE} must be a JSON object, not {type(given).__name__}")
    unknown = sorted(map(str, set(given) - set(PARAM_KEYS)))
    if unknown:
        raise UsageError(
            f"{PARAMS_FILE}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(PARAM_KEYS)}"
        )
    try:
        return resolve_params(config, **given)
    except UsageError as exc:
        raise UsageError(f"{PARAMS_FILE}: {exc}") from None


def _open_regular(archive: Path):
    """The archive opened for reading; never a symlink, a FIFO (which would block) or a folder."""
    refused = UsageError(f"the shard {archive.name} is not a regular file")
    try:
        fd = os.open(archive, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise refused if exc.errno == errno.ELOOP else exc from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise refused
    return os.fdopen(fd, "rb")


def run_shard(model, config: dict, archive: Path, work: Path, beat) -> str:
    """The results.jsonl text of one shard archive (``beat()`` after each item);
    UsageError when the archive is unusable."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        with _open_regular(archive) as f, tarfile.open(fileobj=f, mode="r:") as tar:
            files = read_members(tar, config["limits"])
            params = read_params(tar, files.pop(PARAMS_FILE, None), config)
            for name, member in files.items():
                target = work / name
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, target.open("wb") as dst:
                    shutil.copyfileobj(src, dst)  # member.size bytes at most
    except tarfile.TarError as exc:
        raise UsageError(f"the shard is not a readable uncompressed tar: {one_line(exc)}") from None
    except OSError as exc:
        raise UsageError(f"cannot read or extract the shard: {one_line(exc)}") from None
    lines = []
    for name in sorted(files):
        record = infer_one(model, work / name, name, params, config["limits"]["max_pixels"])
        lines.append(json.dumps(record) + "\n")
        beat()
    return "".join(lines)
