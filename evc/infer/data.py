"""A job's items: a folder's images, an archive's images or a video's frames.

Archives (zip, tar, tar.gz) and videos are extracted into the job's folder; items
are paths relative to the folder they are read from. A data set is untrusted data:
an archive is measured against ``ArchiveCaps`` before anything is written (a zip or
tar bomb is refused, not unpacked), only its regular files are extracted, and a link
in a folder is an item like any other, which ``open_item`` reads as its contents or
refuses with a reason (see there).
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from evc.errors import UsageError
from evc.progress import SILENT, Progress

IMAGE_TYPES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_TYPES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".mpg", ".mpeg")
TAR_TYPES = (".tar", ".tar.gz", ".tgz")
MAX_ITEM_BYTES = 256 << 20  # no image a node can decode is larger; more is an item error
DISK_RESERVE_BYTES = 512 << 20  # what an extraction leaves free on the job folder's disk


@dataclass(frozen=True)
class ArchiveCaps:
    """Limits on a ``--data`` archive, checked on its listing before extracting anything.
    ``ratio``: its images' uncompressed total over the archive's size on disk (JPEG
    and PNG barely compress; a bomb is hundreds to millions to one), checked once that
    total passes ``ratio_from_bytes`` so that a small archive of flat images passes.
    A video's frames count against ``entries`` and ``total_bytes`` as they are written,
    and its frame size against ``frame_pixels`` before any is decoded (a tiny file can
    declare huge frames or hours of them)."""

    entries: int = 100_000
    total_bytes: int = 16 << 30
    ratio: float = 100.0
    ratio_from_bytes: int = 64 << 20
    frame_pixels: int = 1 << 26  # 8K (33 Mpx) passes; one decoded frame stays under 200 MB


CAPS = ArchiveCaps()


def _is_image(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_TYPES


def _images_under(root: Path) -> list[str]:
    """Image files and links named like images (a link is read or refused per item);
    folders that are links are not entered."""
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if (p.is_symlink() or p.is_file()) and _is_image(p.name)
    )


class _Tally:
    """Running totals of an archive's listing against the caps; refuses at the first
    cap passed, naming it."""

    def __init__(self, path: Path, caps: ArchiveCaps, dest: Path):
        self.path, self.caps, self.dest = path, caps, dest
        self.size = max(path.stat().st_size, 1)
        self.entries = self.total = 0

    def _refuse(self, what: str) -> None:
        raise UsageError(
            f"--data {self.path}: {what}; refused before extracting anything. If you trust "
            f"this archive, extract it yourself and give the folder as --data."
        )

    def _too_many(self) -> None:
        self._refuse(f"more than {self.caps.entries} entries (the cap on entries)")

    def declared(self, entries: int, listing_bytes: int) -> None:
        """A zip's end record, before its listing is read (Python reads it whole): the
        entries it declares, and its listing's size (1 KiB an entry is ample)."""
        if entries > self.caps.entries or listing_bytes > self.caps.entries << 10:
            self._too_many()

    def add(self, name: str, size: int, image: bool) -> None:
        self.entries += 1
        if self.entries > self.caps.entries:
            self._too_many()
        name = PurePosixPath(name)
        if name.is_absolute() or ".." in name.parts:
            self._refuse(f"entry {str(name)!r} points outside the archive")
        if not image:
            return
        self.total += size
        if self.total > self.caps.total_bytes:
            self._refuse(
                f"its images hold more than {self.caps.total_bytes >> 20} MiB uncompressed "
                "(the cap on total size)"
            )
        if self.total > self.caps.ratio_from_bytes and self.total > self.caps.ratio * self.size:
            self._refuse(
                f"its images uncompress to more than {self.caps.ratio:g} times its size "
                "(the cap on compression ratio)"
            )

    def check_disk(self) -> None:
        free = shutil.disk_usage(self.dest).free
        if self.total + DISK_RESERVE_BYTES > free:
            self._refuse(f"its images need {self.total >> 20} MiB and {free >> 20} MiB is free")


def _write(src, target: Path, size: int) -> None:
    """Copy at most ``size`` bytes: a listing that lied about a size cannot write more."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as out:
        while size > 0 and (chunk := src.read(min(size, 1 << 20))):
            out.write(chunk)
            size -= len(chunk)


def _extract_zip(path: Path, dest: Path, caps: ArchiveCaps) -> None:
    tally = _Tally(path, caps, dest)
    try:
        with open(path, "rb") as f:
            end = zipfile._EndRecData(f)  # private, but where zipfile itself reads it
        if end is None:
            raise zipfile.BadZipFile("File is not a zip file")
        tally.declared(end[zipfile._ECD_ENTRIES_TOTAL], end[zipfile._ECD_SIZE])
        with zipfile.ZipFile(path) as archive:
            wanted = []
            for info in archive.infolist():
                image = not info.is_dir() and _is_image(info.filename)
                tally.add(info.filename, info.file_size, image)
                if image:
                    wanted.append(info)
            tally.check_disk()
            for info in wanted:
                with archive.open(info) as src:
                    _write(src, dest / info.filename, info.file_size)
    except (zipfile.BadZipFile, OSError, NotImplementedError, RuntimeError, EOFError) as exc:
        # NotImplementedError: an unknown compression; RuntimeError: an encrypted entry
        raise UsageError(f"{path} is not a readable zip file ({exc}).") from None


def _extract_tar(path: Path, dest: Path, caps: ArchiveCaps, progress: Progress) -> None:
    """Regular files only: a hard link to an earlier entry is written as a copy of its
    contents; symbolic links, devices and FIFOs are skipped (and said so)."""
    tally = _Tally(path, caps, dest)
    try:
        with tarfile.open(path, "r:*") as archive:
            wanted, skipped, files = [], [], {}
            for member in archive:  # streamed: a bomb is refused at the header that passes a cap
                if member.islnk():  # its size is the linked entry's, which the header lacks
                    linked = files.get(member.linkname)
                    size = linked.size if linked else 0
                    image = linked is not None and _is_image(member.name)
                else:
                    size = member.size
                    image = member.isreg() and _is_image(member.name)
                if member.isreg():
                    files[member.name] = member
                tally.add(member.name, size, image)
                if image:
                    wanted.append((member, size))
                elif _is_image(member.name) and not member.isdir():
                    skipped.append(member.name)
            tally.check_disk()
            for member, size in wanted:
                with archive.extractfile(member) as src:
                    _write(src, dest / member.name, size)
    except (tarfile.TarError, OSError, EOFError, KeyError) as exc:
        raise UsageError(f"{path} is not a readable tar file ({exc}).") from None
    if skipped:
        shown = ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        progress.log(f"skipped {len(skipped)} entries of {path.name} that are links, not "
                     f"files: {shown}")  # fmt: skip


def _extract_frames(path: Path, dest: Path, fps: float, caps: ArchiveCaps) -> None:
    """Frames every 1/fps seconds, as NAME_<milliseconds>ms.jpg, within the caps."""
    import cv2

    def refuse(what: str) -> None:
        raise UsageError(f"--data {path}: {what}; nothing of it is kept.")

    video = cv2.VideoCapture(str(path))
    if not video.isOpened():
        raise UsageError(f"{path} is not a video OpenCV can read.")
    try:
        width, height = (int(video.get(p)) for p in (cv2.CAP_PROP_FRAME_WIDTH,
                                                     cv2.CAP_PROP_FRAME_HEIGHT))  # fmt: skip
        if width * height > caps.frame_pixels:
            refuse(f"its frames are {width}x{height}, above the {caps.frame_pixels} pixels "
                   "a frame may have (the cap on frame size)")  # fmt: skip
        step_ms, next_ms = 1000.0 / fps, 0.0
        frames = written = 0
        while True:
            ok, frame = video.read()
            if not ok:
                break
            at = video.get(cv2.CAP_PROP_POS_MSEC)
            if at + 1e-6 < next_ms:
                continue
            frames += 1
            if frames > caps.entries:
                refuse(f"more than {caps.entries} frames at --fps {fps:g} (the cap on entries)")
            target = dest / f"{path.stem}_{int(at):08d}ms.jpg"
            cv2.imwrite(str(target), frame)
            written += target.stat().st_size
            if written > caps.total_bytes:
                refuse(f"its frames take more than {caps.total_bytes >> 20} MiB "
                       "(the cap on total size)")  # fmt: skip
            if shutil.disk_usage(dest).free < DISK_RESERVE_BYTES:
                refuse(f"its frames would leave less than {DISK_RESERVE_BYTES >> 20} MiB free")
            next_ms = (at // step_ms + 1) * step_ms  # the next multiple of the step
    finally:
        video.release()


def stage_items(
    data: Path, job_dir: Path, fps: float, progress: Progress = SILENT, caps: ArchiveCaps = CAPS
) -> tuple[Path, list[str]]:
    """(folder the items are read from, item paths relative to it) for a data path."""
    if not data.exists():
        raise UsageError(
            f"--data {data} does not exist; expected a folder, a zip or tar of images, or a video."
        )
    if fps <= 0:
        raise UsageError(f"--fps {fps} must be above 0.")
    if data.is_dir():
        root = data.resolve()
    else:
        root = job_dir / "data"
        root.mkdir(parents=True, exist_ok=True)
        root = root.resolve()
        name = data.name.lower()
        if name.endswith(".zip"):
            _extract_zip(data, root, caps)
        elif name.endswith(TAR_TYPES):
            _extract_tar(data, root, caps, progress)
        elif data.suffix.lower() in VIDEO_TYPES:
            _extract_frames(data, root, fps, caps)
        else:
            raise UsageError(
                f"--data {data}: expected a folder of images, a .zip, .tar, .tar.gz or .tgz of "
                f"images, or a video ({', '.join(VIDEO_TYPES)})."
            )
    items = _images_under(root)
    if not items:
        raise UsageError(f"--data {data} holds no images ({', '.join(IMAGE_TYPES)}).")
    undecodable = [i for i in items if not _utf8(i)]
    if undecodable:
        raise UsageError(
            f"--data {data}: {undecodable[0]!r} has a name that is not UTF-8 "
            f"({len(undecodable)} such name(s)); rename them: results are stored by name."
        )
    return root, items


def _utf8(name: str) -> bool:
    try:
        name.encode()
    except UnicodeEncodeError:  # bytes that are not UTF-8, as os.fsdecode keeps them
        return False
    return True


def open_item(root: Path, item: str):
    """The item's contents as (open binary file, size), or a reason it is not read.

    A link is followed only while it stays inside ``root``: a data set comes from
    someone else, and a link such as ``cat.jpg -> ~/.ssh/id_ed25519`` must not make the
    controller send its own files to the nodes. Only a regular file is read (a FIFO
    would block the shard), and none above ``MAX_ITEM_BYTES``.
    """
    root = os.path.realpath(root)  # strings, not Paths: this runs for every item
    path = os.path.join(root, item)
    real = os.path.realpath(path)
    if not real.startswith(os.path.join(root, "")):  # root and a separator
        return f"a link to {real}, outside the data folder: not read"
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError as exc:
        broken = " (a broken link)" if os.path.islink(path) else ""
        return f"cannot read it: {exc.strerror}{broken}"
    st = os.fstat(fd)
    why = None
    if not stat.S_ISREG(st.st_mode):
        why = "not a regular file"
    elif st.st_size > MAX_ITEM_BYTES:
        why = f"{st.st_size >> 20} MiB, above the {MAX_ITEM_BYTES >> 20} MiB an item may have"
    if why:
        os.close(fd)
        return why
    return os.fdopen(fd, "rb"), st.st_size
