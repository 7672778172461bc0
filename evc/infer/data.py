"""A job's items: a folder's images, a zip's images or a video's frames.

Zips and videos are extracted into the job's folder; items are paths relative to
the folder they are read from.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

from evc.errors import UsageError

IMAGE_TYPES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_TYPES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".mpg", ".mpeg")


def _images_under(root: Path) -> list[str]:
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_TYPES
    )


def _extract_zip(path: Path, dest: Path) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                name = Path(info.filename)
                if info.is_dir() or name.suffix.lower() not in IMAGE_TYPES:
                    continue
                if name.is_absolute() or ".." in name.parts:
                    raise UsageError(f"{path}: entry {info.filename!r} points outside the zip.")
                target = dest / name
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UsageError(f"{path} is not a readable zip file ({exc}).") from None


def _extract_frames(path: Path, dest: Path, fps: float) -> None:
    """Frames every 1/fps seconds, as NAME_<milliseconds>ms.jpg."""
    import cv2

    video = cv2.VideoCapture(str(path))
    if not video.isOpened():
        raise UsageError(f"{path} is not a video OpenCV can read.")
    try:
        step_ms, next_ms = 1000.0 / fps, 0.0
        while True:
            ok, frame = video.read()
            if not ok:
                break
            at = video.get(cv2.CAP_PROP_POS_MSEC)
            if at + 1e-6 >= next_ms:
                cv2.imwrite(str(dest / f"{path.stem}_{int(at):08d}ms.jpg"), frame)
                next_ms = (at // step_ms + 1) * step_ms  # the next multiple of the step
    finally:
        video.release()


def stage_items(data: Path, job_dir: Path, fps: float) -> tuple[Path, list[str]]:
    """(folder the items are read from, item paths relative to it) for a data path."""
    if not data.exists():
        raise UsageError(f"--data {data} does not exist; expected a folder, a zip or a video.")
    if fps <= 0:
        raise UsageError(f"--fps {fps} must be above 0.")
    if data.is_dir():
        root = data.resolve()
    else:
        root = job_dir / "data"
        root.mkdir(parents=True, exist_ok=True)
        suffix = data.suffix.lower()
        if suffix == ".zip":
            _extract_zip(data, root)
        elif suffix in VIDEO_TYPES:
            _extract_frames(data, root, fps)
        else:
            raise UsageError(
                f"--data {data}: expected a folder of images, a .zip of images or a video "
                f"({', '.join(VIDEO_TYPES)})."
            )
    items = _images_under(root)
    if not items:
        raise UsageError(f"--data {data} holds no images ({', '.join(IMAGE_TYPES)}).")
    return root, items
