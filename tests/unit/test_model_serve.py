"""`evc-infer --serve`, the model container's main process, run for real as a subprocess:
shards through the inbox, and hostile shards answered with an error while it serves on."""

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
# Low limits for the hostile shards, so that going past them costs the test little.
LIMITS = {"shard_entries": 20, "shard_bytes": 2_000_000}


def _shard(path: Path, members: dict[str, bytes], headers=(), mode="w") -> None:
    """A shard archive written under a dot-name and renamed, as the controller does.

    ``headers`` are TarInfo entries added as they are, with no data (links, devices, or
    a size the archive does not hold)."""
    part = path.with_name(f".{path.name}.part")
    with tarfile.open(part, mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in headers:
            tar.addfile(info)
    part.rename(path)


def _drop(path: Path, data: bytes) -> None:
    """Raw bytes into the inbox, whole (written under a dot-name and renamed)."""
    part = path.with_name(f".{path.name}.part")
    part.write_bytes(data)
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
        _shard(jobs / "inbox" / "j1-3-1.tar", {"shard.json": PARAMS, **many})
        _wait_for(jobs / "work" / "j1-3-1")
        (jobs / "inbox" / "j1-3-1.tar").unlink()
        _shard(jobs / "inbox" / "j1-4-1.tar", {"shard.json": PARAMS, "x.png": face})
        assert len(_wait_for(jobs / "outbox" / "j1-4-1.jsonl").splitlines()) == 1
        assert sorted(p.name for p in (jobs / "outbox").iterdir()) == [
            "j1-0-1.jsonl", "j1-1-1.error", "j1-2-1.error", "j1-4-1.jsonl"
        ]  # fmt: skip
    finally:
        out, _ = _stop(server)
    assert "serving face-haar" in out


# --------------------------------------------------------------- hostile shards


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(jobs folder, process) of one face-haar server for every hostile shard in turn."""
    pytest.importorskip("cv2")
    root = tmp_path_factory.mktemp("hostile")
    jobs = root / "jobs"
    server = _start(make_home(root / "home", "face-haar", limits=LIMITS), jobs)
    yield jobs, server
    _stop(server)


def _params(raw: bytes):
    return lambda path, face: _shard(path, {"shard.json": raw, "x.png": face})


def _special(kind: bytes, **attrs):
    """A shard whose x.png is a tar entry of ``kind`` (a link, a device, a FIFO)."""
    info = tarfile.TarInfo("x.png")
    info.type = kind
    for key, value in attrs.items():
        setattr(info, key, value)
    return lambda path, face: _shard(path, {"shard.json": PARAMS}, [info])


def _lying_size(path: Path, face: bytes) -> None:
    info = tarfile.TarInfo("x.png")
    info.size = 2**40  # a header that claims a TiB the archive does not hold
    _shard(path, {"shard.json": PARAMS}, [info])


def _gzip_bomb(path: Path, face: bytes) -> None:
    zeros = bytes(64 * 1024**2)  # 64 MB that gzip squeezes into 64 KB
    _shard(path, {"shard.json": PARAMS, "x.png": zeros}, mode="w:gz")


def _truncated(path: Path, face: bytes) -> None:
    whole = path.with_name(".whole")
    _shard(whole, {"shard.json": PARAMS, "x.png": face})
    _drop(path, whole.read_bytes()[:4096])
    whole.unlink()


def _twice(path: Path, face: bytes) -> None:
    _shard(path, {"shard.json": PARAMS, "x.png": face, "./x.png": face})


def _symlink(path: Path, face: bytes) -> None:
    elsewhere = path.parent.parent / "elsewhere.tar"
    _shard(elsewhere, {"shard.json": PARAMS, "x.png": face})
    path.symlink_to(elsewhere)


TAR, RNG = tarfile, np.random.default_rng(1)
PLANTED = "/tmp/evc-planted.png"
HOSTILE = [
    ("bad-json", _params(b'{"conf": 0.5,'), "shard.json is not valid JSON"),
    ("not-utf8", _params(b'{"conf": "\xff"}'), "shard.json is not valid JSON"),
    ("deep-json", _params(b"[" * 30000 + b"]" * 30000), "shard.json is not valid JSON"),
    ("not-an-object", _params(b"[0.5, 0.45, 640]"), "shard.json must be a JSON object, not list"),
    ("conf-a-string", _params(b'{"conf": "high"}'),
     "shard.json: conf must be a number from 0 to 1, not 'high'"),
    ("iou-a-bool", _params(b'{"iou": true}'), "iou must be a number from 0 to 1, not True"),
    ("imgsz-a-float", _params(b'{"imgsz": 640.5}'),
     "imgsz must be an integer from 32 to 4096, not 640.5"),
    ("conf-above-1", _params(b'{"conf": 7}'), "conf must be a number from 0 to 1, not 7"),
    ("iou-nan", _params(b'{"iou": NaN}'), "iou must be a number from 0 to 1, not nan"),
    ("imgsz-too-small", _params(b'{"imgsz": 8}'), "imgsz must be an integer from 32 to 4096"),
    ("imgsz-too-large", _params(b'{"imgsz": 100000}'), "from 32 to 4096, not 100000"),
    ("extra-key", _params(b'{"conf": 0.5, "cmd": "rm -rf /"}'),
     "shard.json: unknown key(s) cmd; allowed: conf, iou, imgsz"),
    ("huge-shard-json", _params(b"{" + b" " * 70000 + b"}"), "shard.json is 70002 bytes, above"),
    ("no-shard-json", lambda path, face: _shard(path, {"x.png": face}), "has no shard.json"),
    ("symlink", _special(TAR.SYMTYPE, linkname="/etc/passwd"), "x.png is a symlink"),
    ("hardlink", _special(TAR.LNKTYPE, linkname="shard.json"), "x.png is a hard link"),
    ("device", _special(TAR.CHRTYPE, devmajor=1, devminor=3), "x.png is a character device"),
    ("fifo-entry", _special(TAR.FIFOTYPE), "x.png is a FIFO"),
    ("dot-dot", lambda path, face: _shard(path, {"shard.json": PARAMS, "../../x.png": face}),
     "unsafe path in the shard archive: '../../x.png'"),
    ("absolute", lambda path, face: _shard(path, {"shard.json": PARAMS, PLANTED: face}),
     f"unsafe path in the shard archive: '{PLANTED}'"),
    ("twice", _twice, "the shard archive holds x.png twice"),
    ("too-many-entries", lambda path, face: _shard(path, {"shard.json": PARAMS, **{
        f"{i}.png": b"" for i in range(25)}}), "the shard archive has more than 20 entries"),
    ("too-many-bytes", lambda path, face: _shard(path, {"shard.json": PARAMS, **{
        f"{i}.png": bytes(800_000) for i in range(3)}}), "add up to more than 2000000 bytes"),
    ("lying-size", _lying_size, "add up to more than 2000000 bytes"),
    ("gzip-bomb", _gzip_bomb, "the shard is not a readable uncompressed tar"),
    ("corrupt", lambda path, face: _drop(path, RNG.bytes(4096)),
     "the shard is not a readable uncompressed tar: invalid header"),
    ("truncated", _truncated, "the shard is not a readable uncompressed tar: unexpected end"),
    ("empty", lambda path, face: _drop(path, b""), "uncompressed tar: empty file"),
    ("a-symlink", _symlink, "the shard a-symlink.tar is not a regular file"),
    ("a-fifo", lambda path, face: os.mkfifo(path), "the shard a-fifo.tar is not a regular file"),
    ("a-folder", lambda path, face: path.mkdir(), "the shard a-folder.tar is not a regular file"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "plant", "expected"), HOSTILE, ids=[c[0] for c in HOSTILE])
def test_a_hostile_shard_is_refused_and_the_next_one_served(server, face, case, plant, expected):
    jobs, process = server
    plant(jobs / "inbox" / f"{case}.tar", face)
    error = _wait_for(jobs / "outbox" / f"{case}.error", 20)
    assert expected in error and "\n" not in error.strip()
    _shard(jobs / "inbox" / f"{case}-next.tar", {"shard.json": PARAMS, "x.png": face})
    (record,) = map(json.loads, _wait_for(jobs / "outbox" / f"{case}-next.jsonl", 20).splitlines())
    assert record["ok"] and near(record["detections"][0]["box"], ASTRONAUT_FACE)
    assert process.poll() is None
    assert not (jobs / "outbox" / f"{case}.jsonl").exists()
    assert not any((jobs / "work").glob("*"))  # nothing left behind
    assert not list(jobs.parent.rglob("x.png")) and not Path(PLANTED).exists()
