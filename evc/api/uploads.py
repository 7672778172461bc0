"""Uploads of a job's data: a multipart body streamed to disk, bounded as it arrives.

The body is parsed while it is read (python-multipart's streaming parser), so nothing
is spooled anywhere first: each file goes straight to its place in the upload's folder
and the byte count is checked before every write. Past ``max_bytes`` (the server's
``--max-upload``), past ``MAX_FILES`` files, with a file name that is not a plain name,
or when the disk would keep less than ``evc.infer.data.DISK_RESERVE_BYTES`` free, the
request is refused and the folder removed. What is uploaded then goes through the same
checks as any ``--data`` (archive caps, links, sizes: :mod:`evc.infer.data`).
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import HTTPException, Request
from python_multipart.multipart import MultipartParser, parse_options_header

from evc.config import Workspace
from evc.infer.data import DISK_RESERVE_BYTES, IMAGE_TYPES, TAR_TYPES, VIDEO_TYPES

MAX_FILES = 10_000
MAX_FIELD_BYTES = 64 << 10  # a form field that is not a file (the job's options, JSON)
_BAD_NAME = re.compile(r"[\x00-\x1f\x7f/\\]")


@dataclass
class Upload:
    folder: Path
    files: list[Path] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)
    size: int = 0

    @property
    def data(self) -> Path:
        """What a job reads: the one archive or video uploaded, else the folder of images."""
        if len(self.files) == 1 and not _is_image(self.files[0].name):
            return self.files[0]
        return self.folder

    def check_kinds(self) -> None:
        others = [f.name for f in self.files if not _is_image(f.name)]
        if not self.files:
            raise HTTPException(400, "No file was uploaded (form field 'files').")
        if others and len(self.files) > 1:
            raise HTTPException(
                400, "Upload either images, or one archive (.zip, .tar, .tar.gz, .tgz) or video."
            )
        if others and not others[0].lower().endswith((".zip", *TAR_TYPES, *VIDEO_TYPES)):
            raise HTTPException(
                400, f"{others[0]!r}: expected images ({', '.join(IMAGE_TYPES)}), an archive "
                f"(.zip, .tar, .tar.gz, .tgz) or a video ({', '.join(VIDEO_TYPES)}).",
            )  # fmt: skip

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_TYPES)


def uploads_dir(ws: Workspace) -> Path:
    path = ws.ensure_private_dir() / "uploads"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def _file_name(raw: bytes) -> str:
    try:
        name = raw.decode()
    except UnicodeDecodeError:
        raise HTTPException(400, "A file name is not UTF-8.") from None
    if not name or name.startswith(".") or _BAD_NAME.search(name) or len(raw) > 255:
        raise HTTPException(
            400, f"{name[:80]!r} is not a plain file name (no folders, no leading '.')."
        )
    return name


class _Receiver:
    """python-multipart callbacks: headers of each part, then its data to a file or a field."""

    def __init__(self, upload: Upload, max_bytes: int):
        self.upload, self.max_bytes = upload, max_bytes
        self.headers: dict[bytes, bytes] = {}
        self._field_name = self._value = b""
        self.out = None  # the open file of the current part
        self.name: str | None = None  # the form field of the current part
        self.buffer: bytearray | None = None

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._begin, "on_header_field": self._header_field,
            "on_header_value": self._header_value, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_done, "on_part_data": self._data,
            "on_part_end": self._end,
        }  # fmt: skip

    def _begin(self) -> None:
        self.headers, self.out, self.buffer = {}, None, None

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field_name += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self.headers[self._field_name.lower()] = self._value
        self._field_name = self._value = b""

    def _headers_done(self) -> None:
        disposition, params = parse_options_header(self.headers.get(b"content-disposition"))
        if disposition != b"form-data" or b"name" not in params:
            raise HTTPException(400, "Each part needs Content-Disposition: form-data; name=...")
        self.name = params[b"name"].decode("utf-8", "replace")
        if b"filename" not in params:
            self.buffer = bytearray()
            return
        if len(self.upload.files) >= MAX_FILES:
            raise HTTPException(413, f"At most {MAX_FILES} files per upload.")
        path = self.upload.folder / _file_name(params[b"filename"])
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            raise HTTPException(400, f"{path.name!r} is uploaded twice.") from None
        self.out = os.fdopen(fd, "wb")
        self.upload.files.append(path)

    def _data(self, data: bytes, start: int, end: int) -> None:
        size = end - start
        self.upload.size += size
        if self.upload.size > self.max_bytes:
            raise HTTPException(413, f"The upload is larger than {self.max_bytes} bytes.")
        if self.out is not None:
            self.out.write(data[start:end])
        elif self.buffer is not None:
            if len(self.buffer) + size > MAX_FIELD_BYTES:
                raise HTTPException(
                    413, f"Form field {self.name!r} is over {MAX_FIELD_BYTES} bytes."
                )
            self.buffer += data[start:end]

    def _end(self) -> None:
        if self.out is not None:
            self.out.close()
            self.out = None
        elif self.buffer is not None and self.name is not None:
            try:
                self.upload.fields[self.name] = self.buffer.decode()
            except UnicodeDecodeError:
                raise HTTPException(400, f"Form field {self.name!r} is not UTF-8.") from None

    def close(self) -> None:
        if self.out is not None:
            self.out.close()


async def receive(request: Request, ws: Workspace, max_bytes: int) -> Upload:
    """Stream a multipart/form-data body into a new folder under ``.evc/uploads/``."""
    ctype, params = parse_options_header(request.headers.get("content-type"))
    boundary = params.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary or len(boundary) > 200:
        raise HTTPException(415, "Send multipart/form-data (fields 'options' and 'files').")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit():
        if int(length) > max_bytes + MAX_FIELD_BYTES:
            raise HTTPException(413, f"The upload is larger than {max_bytes} bytes.")
        root = uploads_dir(ws)
        if shutil.disk_usage(root).free - int(length) < DISK_RESERVE_BYTES:
            raise HTTPException(507, "Not enough free disk on the server for this upload.")
    upload = Upload(uploads_dir(ws) / uuid.uuid4().hex)
    upload.folder.mkdir(mode=0o700)
    receiver = _Receiver(upload, max_bytes)
    try:
        parser = MultipartParser(boundary, receiver.callbacks())
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except HTTPException:
        receiver.close()
        upload.discard()
        raise
    except Exception as exc:  # a malformed body (python-multipart's parse errors)
        receiver.close()
        upload.discard()
        raise HTTPException(400, f"Malformed multipart body: {exc}") from None
    receiver.close()
    return upload
