"""build_once across real processes: what two processes need at once is built once."""

import subprocess
import sys
import time

_RACER = """
import sys, time
from pathlib import Path
from evc.cache import build_once
done, builds, fail = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "fail"
def build():
    with builds.open("a") as f:
        f.write(sys.argv[4] + "\\n")
    time.sleep(1.5)
    if fail:
        raise SystemExit(3)
    done.write_text("built")
print(build_once("image x", done.exists, build, print))
"""


def _start(tmp_path, name, fail=False):
    return subprocess.Popen(
        [sys.executable, "-c", _RACER, tmp_path / "done", tmp_path / "builds",
         "fail" if fail else "ok", name],
        stdout=subprocess.PIPE, text=True,
        env={"EVC_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": ":".join(sys.path)},
    )  # fmt: skip


def _wait_for_first_build(tmp_path):
    deadline = time.monotonic() + 30
    while not (tmp_path / "builds").exists():
        assert time.monotonic() < deadline, "the first process never started building"
        time.sleep(0.05)


def test_the_second_process_waits_and_finds_it_built(tmp_path):
    first = _start(tmp_path, "first")
    _wait_for_first_build(tmp_path)
    second = _start(tmp_path, "second")
    out1, out2 = first.communicate(timeout=60)[0], second.communicate(timeout=60)[0]
    assert out1.strip() == "True"
    assert out2.splitlines() == ["waiting for another EVC process that is building image x",
                                 "False"]  # fmt: skip
    assert (tmp_path / "builds").read_text() == "first\n"
    again = _start(tmp_path, "third")  # built: no lock, no build
    assert again.communicate(timeout=60)[0].strip() == "False"


def test_a_failed_build_leaves_the_lock_to_the_next(tmp_path):
    first = _start(tmp_path, "first", fail=True)
    _wait_for_first_build(tmp_path)
    second = _start(tmp_path, "second")
    first.communicate(timeout=60)
    assert first.returncode == 3
    assert second.communicate(timeout=60)[0].splitlines()[-1] == "True"
    assert (tmp_path / "builds").read_text() == "first\nsecond\n"
    assert (tmp_path / "done").read_text() == "built"
