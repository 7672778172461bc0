"""`evc-infer --serve`, the model container's main process, run for real as a subprocess."""

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from evc_infer.contract import check_record
from PIL import Image

from tests.unit.model_support import ASTRONAUT_FACE, COMMON, make_home, near

PARAMS = json.dumps({"conf": None, "iou": None, "imgsz": None}).encode()


def _shard(path: Path, members: dict[str, bytes]) -> None:
    """A shard archive written under a dot-name and renamed, as the controller does."""
    part = path.with_name(f".{path.name}.part")
    with tarfile.open(part, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    part.rename(path)


def _wait_for(path: Path, seconds: float = 60) -> str:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    return path.read_text() if path.is_file() else ""


def _start(home: Path, jobs: Path) -> subprocess.Popen:
    """The server, once its model is loaded and its inbox is there."""
    server = subprocess.Popen(
        [sys.executable, "-m", "evc_infer", "--serve", str(jobs), "--home", str(home)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(COMMON)},
    )  # fmt: skip
    _wait_for(jobs / "serve.alive")
    return server


def _stop(server: subprocess.Popen) -> tuple[str, str]:
    server.send_signal(signal.SIGTERM)
    out, err = server.communicate(timeout=30)
    assert server.returncode == 0, err
    assert "Traceback" not in err
    return out, err


@pytest.fixture(scope="module")
def face() -> bytes:
    """skimage's astronaut as a PNG: one face."""
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buf, format="PNG")
    return buf.getvalue()


def test_serve_runs_shards_from_the_inbox_until_sigterm(face, tmp_path):
    pytest.importorskip("cv2")
    home, jobs = make_home(tmp_path / "home", "face-haar"), tmp_path / "jobs"
    corrupt = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    server = _start(home, jobs)
    try:
        _shard(jobs / "inbox" / "j1-0-1.tar", {
            "shard.json": PARAMS, "a/astronaut.png": face, "corrupt.jpg": corrupt,
        })  # fmt: skip
        lines = _wait_for(jobs / "outbox" / "j1-0-1.jsonl").splitlines()
        records = {r["item"]: r for r in map(json.loads, lines)}
        assert set(records) == {"a/astronaut.png", "corrupt.jpg"}
        assert records["a/astronaut.png"]["ok"] and not records["corrupt.jpg"]["ok"]
        box = records["a/astronaut.png"]["detections"][0]["box"]
        assert near(box, ASTRONAUT_FACE)
        assert [p for r in records.values() for p in check_record(r, r["item"])] == []
        assert not (jobs / "inbox" / "j1-0-1.tar").exists()  # consumed
        assert not (jobs / "work").exists() or not any((jobs / "work").iterdir())
        # a shard it cannot use is answered with an .error, and the server goes on
        _shard(jobs / "inbox" / "j1-1-1.tar", {"../escape.jpg": face})
        assert "unsafe path" in _wait_for(jobs / "outbox" / "j1-1-1.error")
        _shard(jobs / "inbox" / "j1-2-1.tar", {"shard.json": b'{"conf": 7}', "x.png": face})
        assert "conf must be a number from 0 to 1" in _wait_for(jobs / "outbox" / "j1-2-1.error")
        assert time.time() - (jobs / "serve.alive").stat().st_mtime < 5
        # a shard whose controller gave up (it deletes the archive) gets no answer
        many = {f"{i}.png": face for i in range(50)}
        _shard(jobs / "inbox" / "j1-3-1.tar", many)
        _wait_for(jobs / "work" / "j1-3-1")
        (jobs / "inbox" / "j1-3-1.tar").unlink()
        _shard(jobs / "inbox" / "j1-4-1.tar", {"x.png": face})
        assert len(_wait_for(jobs / "outbox" / "j1-4-1.jsonl").splitlines()) == 1
        assert sorted(p.name for p in (jobs / "outbox").iterdir()) == [
            "j1-0-1.jsonl", "j1-1-1.error", "j1-2-1.error", "j1-4-1.jsonl"
        ]  # fmt: skip
    finally:
        out, _ = _stop(server)
    assert "serving face-haar" in out
