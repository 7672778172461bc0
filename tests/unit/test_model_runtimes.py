"""The model images' inference contract, run for real in this venv (no Docker).

Each runtime gets a temp home laid out like /opt/evc in an image, and `python -m evc_infer`
runs on it as a subprocess, exactly as the image's entrypoint would.
"""

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from evc_infer.contract import check_output, check_record
from evc_infer.home import import_runtime
from evc_infer.inputs import decode_image, find_inputs, letterbox, unletterbox
from PIL import Image

from tests.unit.model_support import ASTRONAUT_FACE, MODEL_IMAGES, evc_infer, make_home, near

COCO = (
    "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant "
    "stop_sign parking_meter bench bird cat dog horse sheep cow elephant bear zebra giraffe "
    "backpack umbrella handbag tie suitcase frisbee skis snowboard sports_ball kite "
    "baseball_bat baseball_glove skateboard surfboard tennis_racket bottle wine_glass cup "
    "fork knife spoon bowl banana apple sandwich orange broccoli carrot hot_dog pizza donut "
    "cake chair couch potted_plant bed dining_table toilet tv laptop mouse remote keyboard "
    "cell_phone microwave oven toaster sink refrigerator book clock vase scissors teddy_bear "
    "hair_drier toothbrush"
).split()


# ----------------------------------------------------------------------------- helpers


def runtime_module(runtime: str):
    return import_runtime(MODEL_IMAGES / runtime / "runtime.py")


def assert_well_formed(output: Path) -> tuple[list[dict], dict]:
    problems, records, summary = check_output(output)
    assert problems == []
    return records, summary


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


@pytest.fixture
def images(tmp_path, astronaut) -> Path:
    """astronaut.png, a corrupt .jpg, a truncated .PNG in a subfolder, and a .txt."""
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    Image.fromarray(astronaut).save(root / "astronaut.png")
    rng = np.random.default_rng(0)
    (root / "corrupt.jpg").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    png = (root / "astronaut.png").read_bytes()
    (root / "sub" / "truncated.PNG").write_bytes(png[: len(png) // 3])
    (root / "notes.txt").write_text("not an image\n")
    return root


@pytest.fixture(scope="module")
def face_home(tmp_path_factory) -> Path:
    pytest.importorskip("cv2")
    return make_home(tmp_path_factory.mktemp("face") / "home", "face-haar")


@pytest.fixture(scope="module")
def ultralytics_env(tmp_path_factory) -> dict:
    pytest.importorskip("ultralytics")
    return {"YOLO_OFFLINE": "1", "YOLO_CONFIG_DIR": str(tmp_path_factory.mktemp("yolo-cfg"))}


@pytest.fixture(scope="module")
def yolo_weights(tmp_path_factory, ultralytics_env) -> Path:
    """yolov8n built from its YAML (random weights): yolov8n.pt, and yolov8n.onnx at 320 px."""
    work = tmp_path_factory.mktemp("export")
    code = (
        "from ultralytics import YOLO; m = YOLO('yolov8n.yaml'); m.save('yolov8n.pt'); "
        "m.export(format='onnx', imgsz=320)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=work,
        env={**os.environ, **ultralytics_env},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return work


@pytest.fixture(scope="module")
def yolo_onnx(yolo_weights) -> Path:
    return yolo_weights / "yolov8n.onnx"


@pytest.fixture(scope="module")
def yolo_home(tmp_path_factory, yolo_onnx) -> Path:
    return make_home(tmp_path_factory.mktemp("yolo") / "home", "yolo-onnx", yolo_onnx)


# --------------------------------------------------------------------------- face-haar


def test_face_haar_finds_the_face_and_reports_bad_files(face_home, images, tmp_path):
    out = tmp_path / "out"
    proc = evc_infer("--home", face_home, "--input", images, "--output", out)
    assert proc.returncode == 0, proc.stderr
    records, summary = assert_well_formed(out)
    assert [r["item"] for r in records] == ["astronaut.png", "corrupt.jpg", "sub/truncated.PNG"]
    face, corrupt, truncated = records
    assert face["ok"] and (face["width"], face["height"]) == (512, 512)
    assert len(face["detections"]) == 1
    det = face["detections"][0]
    assert (det["label"], det["class_id"], det["score"]) == ("face", 0, 1.0)
    assert near(det["box"], ASTRONAUT_FACE), det["box"]
    for bad in (corrupt, truncated):
        assert not bad["ok"] and bad["detections"] == [] and bad["width"] is None
        assert bad["error"].startswith("cannot decode image: ")
    assert (summary["count"], summary["ok"], summary["failed"]) == (3, 1, 2)
    assert (summary["skipped"], summary["skipped_items"]) == (1, ["notes.txt"])
    assert summary["runtime"] == "face-haar" and summary["model"] is None
    assert summary["params"] == {"conf": 0.25, "iou": 0.45, "imgsz": 1280}
    assert {"python", "numpy", "pillow", "opencv"} <= set(summary["versions"])
    assert summary["latency_ms"]["p50"] == face["latency_ms"]
    assert json.loads(proc.stdout.splitlines()[-1])["ok"] == 1


def test_face_haar_imgsz_shrinks_but_boxes_stay_in_original_pixels(astronaut):
    pytest.importorskip("cv2")
    model = runtime_module("face-haar").load(Path("/nonexistent"), {})
    (det,) = model.predict(astronaut, conf=0.25, iou=0.45, imgsz=300)
    x, y, w, h = det["box"]
    fx, fy, fw, fh = ASTRONAUT_FACE
    assert near((x + w / 2, y + h / 2), (fx + fw / 2, fy + fh / 2))


# --------------------------------------------------------------------------- yolo-onnx


def test_yolo_onnx_run_is_well_formed(yolo_home, images, astronaut, tmp_path):
    Image.fromarray(astronaut[100:400, :]).save(images / "wide.jpg")  # 512x300: padded
    out = tmp_path / "out"
    # conf 0 lets every anchor of the random model through NMS and the box mapping.
    proc = evc_infer("--home", yolo_home, "--input", images, "--output", out, "--conf", 0)
    assert proc.returncode == 0, proc.stderr
    records, summary = assert_well_formed(out)
    by_item = {r["item"]: r for r in records}
    assert set(by_item) == {"astronaut.png", "corrupt.jpg", "sub/truncated.PNG", "wide.jpg"}
    assert (by_item["wide.jpg"]["width"], by_item["wide.jpg"]["height"]) == (512, 300)
    for item in ("astronaut.png", "wide.jpg"):
        dets = by_item[item]["detections"]
        assert 0 < len(dets) <= 300
        assert {d["label"] for d in dets} <= {str(i) for i in range(80)}  # names from metadata
        assert all(d["label"] == str(d["class_id"]) for d in dets)
    assert (summary["ok"], summary["failed"], summary["skipped"]) == (2, 2, 1)
    assert summary["params"] == {"conf": 0.0, "iou": 0.45, "imgsz": 640}
    assert summary["versions"]["onnxruntime_providers"].endswith("CPUExecutionProvider")


def test_yolo_onnx_reads_names_and_input_size_from_the_model(yolo_onnx):
    config = {"weights": {"file": yolo_onnx.name}}
    model = runtime_module("yolo-onnx").load(yolo_onnx.parent, config)
    assert model.names == {i: str(i) for i in range(80)}
    assert model.fixed_size == (320, 320) and not model.end2end


def test_parse_names():
    parse_names = runtime_module("yolo-onnx").parse_names
    coco = {i: name.replace("_", " ") for i, name in enumerate(COCO)}
    names = parse_names({"names": repr(coco)})  # how ultralytics writes them
    assert len(names) == 80 and names[0] == "person" and names[79] == "toothbrush"
    assert parse_names({"names": "['cat', 'dog']"}) == {0: "cat", 1: "dog"}
    for bad in ({}, {"names": "{0: 'a',"}, {"names": "42"}, {"names": "__import__('os')"}):
        assert parse_names(bad) == {}


def test_is_end2end():
    is_end2end = runtime_module("yolo-onnx").is_end2end
    assert is_end2end({"end2end": "True"})
    assert is_end2end({"end2end": "False", "args": "{'nms': True, 'batch': 1}"})
    assert not is_end2end({"end2end": "False", "args": "{'nms': None}"})
    assert not is_end2end({})


@pytest.mark.parametrize(
    ("shape", "size", "rect"),
    [((100, 200), (320, 320), (50, 20, 90, 60)), ((480, 240), (256, 320), (30, 200, 200, 400))],
)
def test_letterbox_round_trip(shape, size, rect):
    image = np.zeros((*shape, 3), np.uint8)
    x1, y1, x2, y2 = rect
    image[y1:y2, x1:x2] = 255
    canvas, scale, pad = letterbox(image, size, 114)
    assert canvas.shape == (*size, 3) and canvas.dtype == np.uint8
    assert (canvas[0, 0] == 114).all() or (canvas[-1, -1] == 114).all()  # padded somewhere
    ys, xs = np.nonzero(canvas[..., 0] > 200)
    found = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)
    back = unletterbox(found, scale, pad)[0]
    assert np.allclose(back, rect, atol=1.5), back


def test_decode_layouts():
    rt = runtime_module("yolo-onnx")
    # two anchors, three classes: (cx, cy, w, h, s0, s1, s2)
    rows = np.array([[50, 50, 20, 10, 0.1, 0.9, 0.2], [10, 10, 4, 4, 0.1, 0.1, 0.2]], np.float32)
    first = rt.decode(rows.T[None], conf=0.5, end2end=False, nc=3)  # [1, 4+nc, N]
    second = rt.decode(rows[None], conf=0.5, end2end=False, nc=3)  # [1, N, 4+nc]
    for boxes, scores, class_ids in (first, second):
        assert boxes.tolist() == [[40, 45, 60, 55]]
        assert np.allclose(scores, [0.9]) and class_ids.tolist() == [1]
    e2e = np.array([[[1, 2, 3, 4, 0.8, 7], [0, 0, 0, 0, 0.0, 0]]], np.float32)
    boxes, scores, class_ids = rt.decode(e2e, conf=0.25, end2end=True)
    assert boxes.tolist() == [[1, 2, 3, 4]] and class_ids.tolist() == [7]


def test_nms_suppresses_overlaps_within_a_class_only():
    nms = runtime_module("yolo-onnx").nms
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.8, 0.9, 0.7], np.float32)
    assert nms(boxes, scores, 0.5, np.array([0, 0, 0])).tolist() == [1, 2]
    assert nms(boxes, scores, 0.5, np.array([0, 1, 0])).tolist() == [1, 0, 2]
    assert nms(boxes, scores, 0.7, np.array([0, 0, 0])).tolist() == [1, 0, 2]  # IoU ~0.68
    assert nms(boxes, scores, 0.5, np.array([0, 0, 0]), max_det=1).tolist() == [1]
    assert nms(np.empty((0, 4)), np.empty(0), 0.5, np.empty(0)).tolist() == []


# ------------------------------------------------------------------------- ultralytics


def test_ultralytics_mapping():
    to_detections = runtime_module("ultralytics").to_detections
    dets = to_detections(
        np.array([[10, 20, 110, 70], [0, 0, 5, 5]]),
        np.array([0.9, 0.3]),
        np.array([2.0, 5.0]),
        {2: "car"},
    )
    assert dets == [
        {"label": "car", "class_id": 2, "score": 0.9, "box": [10.0, 20.0, 100.0, 50.0]},
        {"label": "class5", "class_id": 5, "score": 0.3, "box": [0.0, 0.0, 5.0, 5.0]},
    ]
    assert to_detections(np.empty((0, 4)), np.empty(0), np.empty(0), {}) == []


def test_ultralytics_runtime_loads_and_leaves_decoding_to_pillow(
    tmp_path, images, yolo_weights, ultralytics_env
):
    # Predict itself cannot run on this machine's CPU torch (no torchvision ops), so the
    # astronaut may be a model error here; load, versions and the other lines must hold.
    home = make_home(tmp_path / "home", "ultralytics", yolo_weights / "yolov8n.pt")
    out = tmp_path / "out"
    proc = evc_infer("--home", home, "--input", images, "--output", out, env=ultralytics_env)
    assert proc.returncode == 0, proc.stderr
    records, summary = assert_well_formed(out)
    corrupt = next(r for r in records if r["item"] == "corrupt.jpg")
    # importing ultralytics patches Image.open to pip-install pi-heif on unknown files
    assert corrupt["error"].startswith("cannot decode image: cannot identify image file")
    assert {"torch", "ultralytics", "cuda", "device"} <= set(summary["versions"])


# ------------------------------------------------------------------ the shared runner


FAKE_RUNTIME = """
import numpy as np

class Model:
    def predict(self, image, conf, iou, imgsz):
        h, w = image.shape[:2]
        if w > 100:
            raise ValueError("too wide for this fake")
        return [
            {"label": "half-out", "class_id": 1, "score": 0.512345, "box": [-5, h - 4, 20, 30],
             "keypoints": [{"name": "in", "x": 3.04, "y": 45}, {"name": "out", "x": -2, "y": 99}]},
            {"label": "outside", "class_id": 2, "score": 0.5, "box": [w + 1, 0, 5, 5]},
            {"label": "nan", "class_id": 3, "score": 0.5, "box": [float("nan"), 0, 5, 5]},
        ]

    def versions(self):
        return {"fake": 1}

def load(model_dir, config):
    return Model()
"""


def test_runner_clips_boxes_and_survives_model_errors(tmp_path):
    home = make_home(tmp_path / "home", "face-haar", name="fake", selftest={})
    (home / "runtime" / "runtime.py").write_text(FAKE_RUNTIME)
    inp = tmp_path / "in"
    inp.mkdir()
    Image.new("RGB", (64, 48)).save(inp / "a.BMP")
    Image.new("RGB", (200, 48)).save(inp / "b.webp")
    proc = evc_infer("--home", home, "--input", inp, "--output", inp / "out")
    assert proc.returncode == 0, proc.stderr
    records, summary = assert_well_formed(inp / "out")
    small, wide = records
    points = [{"name": "in", "x": 3.0, "y": 45.0}, {"name": "out", "x": 0.0, "y": 48.0}]
    assert small["detections"] == [
        {"label": "half-out", "class_id": 1, "score": 0.5123, "box": [0.0, 44.0, 15.0, 4.0],
         "keypoints": points}  # keypoints, where a runtime gives them, clipped and rounded too
    ]  # fmt: skip
    assert wide["error"] == "model error: ValueError: too wide for this fake"
    assert (wide["width"], wide["detections"]) == (200, [])
    assert summary["versions"]["fake"] == "1" and summary["runtime"] == "fake"
    # a second run into the same folder does not take its own output as input
    assert evc_infer("--home", home, "--input", inp, "--output", inp / "out").returncode == 0
    assert check_output(inp / "out")[2]["skipped"] == 0


def test_find_inputs_sorted_case_insensitive_and_excluding_output(tmp_path):
    for name in ("b/z.JPEG", "a.png", "B.Webp", "out/x.jpg", "c.gif", "b/a.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    inputs, skipped = find_inputs(tmp_path, ("jpg", "jpeg", "png", "webp"), tmp_path / "out")
    assert inputs == ["B.Webp", "a.png", "b/a.jpg", "b/z.JPEG"]
    assert skipped == ["c.gif"]


def test_decode_applies_exif_orientation(tmp_path, astronaut):
    stored = Image.fromarray(astronaut[:, :300]).rotate(90, expand=True)  # 300 high, 512 wide
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    stored.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    decoded = decode_image(tmp_path / "rotated.jpg", max_pixels=512 * 300)
    assert decoded.shape == (512, 300, 3) and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - astronaut[:, :300]).mean() < 4


def _png_claiming(path: Path, width: int, height: int) -> None:
    """An 8-bit RGB PNG whose header says width x height but whose data is one row: the
    header alone tells a decoder how much memory the image would take."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    row = zlib.compress(b"\0" * (1 + 3 * width))
    png = chunk(b"IHDR", header) + chunk(b"IDAT", row) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png)


def test_images_above_the_pixel_cap_are_item_errors(tmp_path, face_home, astronaut):
    inp = tmp_path / "in"
    inp.mkdir()
    _png_claiming(inp / "claims-400mp.png", 20000, 20000)  # past Pillow's own bomb error
    _png_claiming(inp / "claims-100mp.png", 10000, 10000)  # past Pillow's bomb warning
    Image.new("L", (8000, 8000)).save(inp / "real-64mp.png")  # Pillow alone decodes it
    Image.fromarray(astronaut).save(inp / "astronaut.png")
    # Pillow's DecompressionBombWarning raised as an error must not pre-empt the cap either
    warnings = {"PYTHONWARNINGS": "error:::PIL.Image"}
    proc = evc_infer("--home", face_home, "--input", inp, "--output", tmp_path / "o", env=warnings)
    assert proc.returncode == 0, proc.stderr
    records, summary = assert_well_formed(tmp_path / "o")
    errors = {r["item"]: r["error"] for r in records}
    assert errors == {
        "astronaut.png": None,
        "claims-100mp.png": "image is 10000x10000 (100 MP), above the cap of 40 MP",
        "claims-400mp.png": "image is 20000x20000 (400 MP), above the cap of 40 MP",
        "real-64mp.png": "image is 8000x8000 (64 MP), above the cap of 40 MP",
    }
    assert summary["failed"] == 3 and "Traceback" not in proc.stderr

    home = make_home(tmp_path / "home", "face-haar", limits={"max_pixels": 100_000})
    proc = evc_infer("--home", home, "--input", inp, "--output", tmp_path / "o2")
    assert proc.returncode == 0, proc.stderr
    records, _ = assert_well_formed(tmp_path / "o2")
    assert records[0]["error"] == "image is 512x512 (0.262 MP), above the cap of 0.1 MP"


def test_contract_checks_catch_malformed_records():
    good = {
        "item": "a.jpg",
        "ok": True,
        "error": None,
        "latency_ms": 1.5,
        "width": 100,
        "height": 50,
        "detections": [{"label": "x", "class_id": 0, "score": 0.5, "box": [10, 10, 20, 20]}],
    }
    assert check_record(good, "r") == []
    det = good["detections"][0]
    with_points = [{**det, "keypoints": [{"name": "nose", "x": 15, "y": 20.5}]}]
    assert check_record({**good, "detections": with_points}, "r") == []  # optional field

    def with_det(**changes):
        return {**good, "detections": [{**det, **changes}]}

    for bad in (
        with_det(box=[90, 10, 20, 20]),
        with_det(class_id=True),
        with_det(keypoints={"nose": [15, 20]}),  # a list of points, not a mapping
        with_det(keypoints=[{"name": "nose", "x": 15}]),  # no y
        with_det(keypoints=[{"name": "nose", "x": 15, "y": 20, "z": 1}]),
        with_det(keypoints=[{"name": "nose", "x": 101, "y": 20}]),  # outside the 100 px image
        with_det(keypoints=[{"name": 7, "x": 15, "y": 20}]),
        {**good, "ok": False},
        {k: v for k, v in good.items() if k != "latency_ms"},
        {**good, "extra": 1},
        {**good, "ok": False, "error": "boom"},  # a failed item with detections
    ):
        assert check_record(bad, "r") != []


# --------------------------------------------------------------------------- selftest


def selftest_report(proc) -> dict:
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_selftest_face_haar(face_home):
    proc = evc_infer("--selftest", "--home", face_home)
    report = selftest_report(proc)
    assert proc.returncode == 0, report
    assert report["selftest"] == "ok" and report["detections"] == 1
    assert report["latency_ms"] > 0


def test_selftest_yolo_onnx(yolo_home):
    proc = evc_infer("--selftest", "--home", yolo_home)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert selftest_report(proc)["selftest"] == "ok"


def test_selftest_fails_when_expectations_do_not_hold(tmp_path):
    pytest.importorskip("cv2")
    home = make_home(tmp_path / "home", "face-haar", selftest={"min_detections": 5})
    proc = evc_infer("--selftest", "--home", home)
    report = selftest_report(proc)
    assert proc.returncode == 1
    assert report["selftest"] == "failed" and "at least 5" in report["reason"]


def test_selftest_fails_without_weights(tmp_path):
    home = make_home(tmp_path / "home", "yolo-onnx")
    proc = evc_infer("--selftest", "--home", home)
    assert proc.returncode == 1
    assert "weights file missing" in selftest_report(proc)["reason"]


# ---------------------------------------------------------------------------- errors


def test_usage_errors_exit_2_with_one_line(tmp_path, face_home):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    bad_limit = make_home(tmp_path / "bad-limit", "face-haar", limits={"max_pixels": 0})
    bad_limits = make_home(tmp_path / "bad-limits", "face-haar", limits={"pixels": 10})
    cases = [
        (),
        ("--input", tmp_path),
        ("--home", face_home, "--input", tmp_path / "missing", "--output", tmp_path / "o"),
        ("--home", face_home, "--input", tmp_path, "--output", blocker / "o"),
        ("--home", face_home, "--input", tmp_path, "--output", tmp_path / "o", "--conf", 2),
        ("--home", tmp_path / "nohome", "--input", tmp_path, "--output", tmp_path / "o"),
        ("--selftest", "--input", tmp_path),
        ("--home", face_home, "--input", tmp_path, "--output", tmp_path / "o", "--imgsz", 8),
        ("--home", bad_limit, "--input", tmp_path, "--output", tmp_path / "o"),
        ("--home", bad_limits, "--input", tmp_path, "--output", tmp_path / "o"),
    ]
    for args in cases:
        proc = evc_infer(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and proc.stderr.startswith("evc-infer: error: ")


def test_model_that_cannot_load_exits_1(tmp_path):
    home = make_home(tmp_path / "home", "yolo-onnx")
    (home / "model" / "model.onnx").write_bytes(b"not onnx")
    proc = evc_infer("--home", home, "--input", tmp_path, "--output", tmp_path / "o")
    assert proc.returncode == 1
    assert proc.stderr.startswith("evc-infer: cannot load the model: ")
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
