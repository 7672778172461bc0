"""Data sets are data: links are read as their contents or refused per item, never
poisoning a shard; shard archives hold regular files only; zip and tar bombs are
refused before anything is written; option ranges are checked on the controller."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import zipfile

import pytest

from evc import db as evcdb
from evc.errors import UsageError
from evc.infer import data, jobs, runner
from tests.conftest import evc


def _options(data, **extra):
    return runner.RunOptions(model="faces:1.0", target="node1,node2", data=data,
                             **{"shard_size": 2, **extra})  # fmt: skip


def _results(ws, job_id):
    return {r["item"]: r for r in jobs.results(ws, job_id)}


@pytest.fixture
def linked(tmp_path):
    """A folder with a symlink and a hard link pair, a link inside a subfolder back up,
    a link out of the folder (to a 'secret' of the controller's), a broken link and a
    file too big to be an image (sparse: it takes no disk)."""
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    (root / "a.jpg").write_bytes(b"A" * 100)
    (root / "b.jpg").write_bytes(b"B" * 100)
    os.link(root / "b.jpg", root / "hard.jpg")
    (root / "link.jpg").symlink_to("a.jpg")
    (root / "sub" / "up.jpg").symlink_to("../a.jpg")
    secret = tmp_path / "id_ed25519.jpg"
    secret.write_bytes(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    (root / "outside.jpg").symlink_to(secret)
    (root / "dangling.jpg").symlink_to("nowhere.jpg")
    with open(root / "huge.jpg", "wb") as f:
        f.truncate(300 << 20)
    return root


def test_links_are_sent_as_contents_or_refused_per_item(workspace, fleet, linked):
    result = runner.run(workspace, _options(linked))
    rows = _results(workspace, result.job["id"])
    errors = {i: r["error"] for i, r in rows.items() if r["state"] == "error"}
    assert set(errors) == {"outside.jpg", "dangling.jpg", "huge.jpg"}, errors
    assert "outside the data folder" in errors["outside.jpg"]
    assert "broken link" in errors["dangling.jpg"]
    assert "300 MiB, above the 256 MiB" in errors["huge.jpg"]
    sent = {item: data for d in fleet.served() for item, data in d.files.items()}
    assert sent == {"a.jpg": b"A" * 100, "b.jpg": b"B" * 100, "hard.jpg": b"B" * 100,
                    "link.jpg": b"A" * 100, "sub/up.jpg": b"A" * 100}  # fmt: skip
    shards = list(evcdb.workspace_db(workspace).query(
        "SELECT state FROM shards WHERE job_id = ?", [result.job["id"]]
    ))  # fmt: skip
    assert shards and all(s["state"] == "done" for s in shards)  # none poisoned, no node dropped


def test_a_shard_archive_is_plain_tar_of_regular_files(linked, tmp_path):
    from evc.infer.shards import build_archive

    path = tmp_path / "shard.tar"
    items = ["a.jpg", "b.jpg", "hard.jpg", "link.jpg", "sub/up.jpg", "outside.jpg"]
    refused = build_archive(path, linked, items, {"conf": None})
    assert list(refused) == ["outside.jpg"]
    with tarfile.open(path, "r:") as tar:  # "r:" opens an uncompressed tar only
        members = tar.getmembers()
        assert [m.name for m in members] == ["shard.json", *items[:-1]]
        assert all(m.isreg() for m in members)
        assert tar.extractfile("hard.jpg").read() == b"B" * 100


def test_a_tar_data_set_is_read_as_its_regular_files(workspace, fleet, tmp_path):
    path = tmp_path / "set.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("a.jpg")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"AAA"))
        for kind, name in ((tarfile.LNKTYPE, "hard.jpg"), (tarfile.SYMTYPE, "soft.jpg")):
            link = tarfile.TarInfo(name)
            link.type, link.linkname = kind, "a.jpg"
            tar.addfile(link)
        etc = tarfile.TarInfo("passwd.jpg")
        etc.type, etc.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(etc)
    result = runner.run(workspace, _options(path))
    assert result.ok
    assert sorted(_results(workspace, result.job["id"])) == ["a.jpg", "hard.jpg"]
    sent = {item: data for d in fleet.served() for item, data in d.files.items()}
    assert sent == {"a.jpg": b"AAA", "hard.jpg": b"AAA"}


def _zero_stream(size):
    """A file of ``size`` zero bytes, read a MiB at a time."""

    class Zeros(io.RawIOBase):
        left = size

        def readable(self):
            return True

        def readinto(self, b):
            n = min(len(b), self.left)
            b[:n] = bytes(n)
            self.left -= n
            return n

    return io.BufferedReader(Zeros(), 1 << 20)


def _zip_bomb(path):
    """80 MiB of zeros in a 80 KiB zip."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("bomb.jpg", "w", force_zip64=True) as f:
            for _ in range(80):
                f.write(bytes(1 << 20))


def _tar_bomb(path):
    """80 MiB of zeros in a .tar.gz."""
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo("bomb.jpg")
        info.size = 80 << 20
        tar.addfile(info, _zero_stream(info.size))


def _tar_huge(path):
    """A .tgz whose first entry says 17 GiB: refused on that header, the rest unread."""
    info = tarfile.TarInfo("huge.jpg")
    info.size = 17 << 30
    with gzip.open(path, "wb") as f:
        f.write(info.tobuf(tarfile.GNU_FORMAT) + bytes(1 << 20))


def _many_entries(path):
    """100001 entries: a zip whose listing repeats one empty entry (built by hand, in
    0.1 s; zipfile takes 10 s to write as many)."""
    import struct

    name = b"a.txt"
    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, 0, 0, 0, len(name), 0)
    central = struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, 0, 0, 0,
                          len(name), 0, 0, 0, 0, 0, 0) + name  # fmt: skip
    n, start = 100_001, len(local) + len(name)
    listing = central * n
    end = start + len(listing)
    zip64_end = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, n, n, len(listing),
                            start)  # fmt: skip
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, end, 1)
    eocd = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF,
                       0xFFFFFFFF, 0)  # fmt: skip
    path.write_bytes(local + name + listing + zip64_end + locator + eocd)


BOMBS = {
    "zip bomb": ("bomb.zip", _zip_bomb, "the cap on compression ratio"),
    "tar bomb": ("bomb.tar.gz", _tar_bomb, "the cap on compression ratio"),
    "tgz entry of 17 GiB": ("huge.tgz", _tar_huge, "the cap on total size"),
    "too many entries": ("many.zip", _many_entries, "more than 100000 entries (the cap on"),
}


@pytest.mark.parametrize("name, make, cap", BOMBS.values(), ids=BOMBS)
def test_a_bomb_is_refused_before_anything_is_extracted(workspace, fleet, tmp_path, name,
                                                        make, cap):  # fmt: skip
    make(tmp_path / name)
    proc = evc("infer", "run", "faces:1.0", "node1,node2", "--data", tmp_path / name)
    assert proc.returncode == 2, proc.stderr
    assert cap in proc.stderr and "refused before extracting anything" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert jobs.list_jobs(workspace) == []
    left = workspace.private_dir / "jobs"
    assert not left.exists() or not any(left.iterdir())  # nothing left behind


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--conf", "1.5", "less than or equal to 1"),
        ("--conf", "nan", "--conf"),
        ("--iou", "-1", "greater than or equal to 0"),
        ("--imgsz", "16", "greater than or equal to 32"),
        ("--imgsz", "8192", "less than or equal to 4096"),
    ],
)
def test_out_of_range_inference_options_are_refused(workspace, tmp_path, flag, value,
                                                    message):  # fmt: skip
    (tmp_path / "a.jpg").write_bytes(b"A")
    proc = evc("infer", "run", "faces:1.0", "--data", tmp_path, flag, value)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert jobs.list_jobs(workspace) == []


def _video(path, frames: int, size=(64, 48), fps=10.0):
    cv2 = pytest.importorskip("cv2")
    import numpy as np

    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    for i in range(frames):
        out.write(np.full((size[1], size[0], 3), i * 7 % 256, dtype=np.uint8))
    out.release()
    return path


VIDEO_CAPS = {
    "frames": (data.ArchiveCaps(entries=5), "more than 5 frames at --fps 10 (the cap on entries)"),
    "bytes": (data.ArchiveCaps(total_bytes=2000), "more than 0 MiB (the cap on total size)"),
    "frame size": (data.ArchiveCaps(frame_pixels=64 * 47), "frames are 64x48, above the 3008"),
}


@pytest.mark.parametrize("caps, message", VIDEO_CAPS.values(), ids=VIDEO_CAPS)
def test_a_video_is_extracted_within_the_caps_or_refused(tmp_path, caps, message):
    video = _video(tmp_path / "clip.avi", frames=20)
    root, items = data.stage_items(video, tmp_path / "ok", fps=10)
    assert len(items) == 20 and all(i.startswith("clip_") for i in items)
    with pytest.raises(UsageError, match="nothing of it is kept") as refused:
        data.stage_items(video, tmp_path / "job", fps=10, caps=caps)
    assert message in str(refused.value)


def test_a_video_of_huge_frames_is_refused_before_decoding_any(workspace, fleet, tmp_path):
    video = _video(tmp_path / "huge.avi", frames=1, size=(8200, 8200))  # 67 Mpx: 200 MB decoded
    assert video.stat().st_size < 5 << 20
    proc = evc("infer", "run", "faces:1.0", "node1,node2", "--data", video)
    assert proc.returncode == 2, proc.stderr
    assert "frames are 8200x8200" in proc.stderr and "the cap on frame size" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert jobs.list_jobs(workspace) == []
    left = workspace.private_dir / "jobs"
    assert not left.exists() or not any(left.iterdir())
