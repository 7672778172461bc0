"""face-blaze for real in this venv (no Docker): MediaPipe's BlazeFace on LiteRT, with the
weights taken out of MediaPipe's wheel by the same code an image build uses.

Known answers on pictures that ship in scikit-image: the astronaut's one face (where
face-haar finds it), six keypoints inside it, and no face where there is none.
"""

import platform
import sys
from dataclasses import replace

import numpy as np
import pytest
from evc_infer.home import import_runtime
from PIL import Image

from evc.errors import EVCError
from evc.model import runtimes
from evc.model.catalogue import native_arch
from tests.unit.model_support import ASTRONAUT_FACE, MODEL_IMAGES, evc_infer, make_home, near
from tests.unit.test_model_runtimes import assert_well_formed, selftest_report

pytest.importorskip("ai_edge_litert")

NO_FACES = ("coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")
KEYPOINTS = ["right_eye", "left_eye", "nose_tip", "mouth_center", "right_ear", "left_ear"]
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


def extract(rt, model_dir):
    """The runtime's packaged weights into ``model_dir``, for this machine's platform."""
    return runtimes.packaged_weights(rt, model_dir, native_arch(), PYTHON, platform.libc_ver()[1])


@pytest.fixture(scope="module")
def blaze_home(tmp_path_factory):
    home = make_home(tmp_path_factory.mktemp("blaze") / "home", "face-blaze")
    source, digest = extract(runtimes.Runtime.load("face-blaze"), home / "model")
    assert source == "mediapipe==0.10.18" and digest.startswith("sha256:")
    return home


@pytest.fixture(scope="module")
def blaze(blaze_home):
    return import_runtime(MODEL_IMAGES / "face-blaze" / "runtime.py").load(blaze_home / "model", {})


def faces(model, image: np.ndarray) -> list[dict]:
    return model.predict(np.ascontiguousarray(image), conf=0.6, iou=0.3, imgsz=192)


def about(box, ref) -> bool:
    """Where ``ref`` is: x, y within 10 px, width and height within 15 %."""
    (w, h), (rw, rh) = box[2:], ref[2:]
    return near(box[:2], ref[:2]) and abs(w / rw - 1) <= 0.15 and abs(h / rh - 1) <= 0.15


def iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    return w * h / (aw * ah + bw * bh - w * h)


def test_the_weights_and_their_licence_come_out_of_the_wheel(blaze_home):
    files = sorted(p.name for p in (blaze_home / "model").iterdir())
    assert files == ["LICENSE", "face_detection_full_range_sparse.tflite"]
    assert "Apache License" in (blaze_home / "model" / "LICENSE").read_text()


def test_a_file_the_wheel_lacks_is_named(tmp_path):
    rt = runtimes.Runtime.load("face-blaze")
    bad = replace(rt, packaged_weights={**rt.packaged_weights, "files": ["mediapipe/nope.tflite"]})
    with pytest.raises(EVCError, match="mediapipe-0.10.18-.*nope.tflite"):
        extract(bad, tmp_path)


def test_finds_the_astronaut_face_with_keypoints_and_nothing_where_there_is_none(
    blaze_home, tmp_path
):
    from skimage import data

    inp = tmp_path / "in"
    inp.mkdir()
    Image.fromarray(data.astronaut()).save(inp / "astronaut.png")
    for name in NO_FACES:
        Image.fromarray(getattr(data, name)()).convert("RGB").save(inp / f"{name}.jpg")
    proc = evc_infer("--home", blaze_home, "--input", inp, "--output", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    records, summary = assert_well_formed(tmp_path / "out")
    found = {r["item"]: r["detections"] for r in records}
    assert {item: dets for item, dets in found.items() if dets}.keys() == {"astronaut.png"}
    (face,) = found["astronaut.png"]
    assert (face["label"], face["class_id"]) == ("face", 0) and face["score"] > 0.85
    x, y, w, h = face["box"]
    assert about(face["box"], ASTRONAUT_FACE), face  # MediaPipe itself: 173.7, 67.8, 103.9
    points = {p["name"]: (p["x"], p["y"]) for p in face["keypoints"]}
    assert list(points) == KEYPOINTS
    assert all(x <= px <= x + w and y <= py <= y + h for px, py in points.values()), points
    (rex, rey), (lex, ley) = points["right_eye"], points["left_eye"]
    assert rex < points["nose_tip"][0] < lex  # the subject's right eye is on the image's left
    assert max(rey, ley) < points["nose_tip"][1] < points["mouth_center"][1]
    assert summary["runtime"] == "face-blaze" and "ai_edge_litert" in summary["versions"]
    assert summary["model"]["source"] == "mediapipe 0.10.18"


def test_agrees_with_face_haar_on_the_astronaut(blaze):
    from skimage import data

    image = data.astronaut()
    haar = import_runtime(MODEL_IMAGES / "face-haar" / "runtime.py").load(None, {})
    (theirs,) = haar.predict(image, 0.25, 0.45, 1280)
    (ours,) = faces(blaze, image)
    ox, oy, ow, oh = ours["box"]
    tx, ty, tw, th = theirs["box"]
    assert near([ox + ow / 2, oy + oh / 2], [tx + tw / 2, ty + th / 2]), (ours, theirs)
    assert about(ours["box"], theirs["box"]) and iou(ours["box"], theirs["box"]) > 0.75


def test_boxes_and_keypoints_follow_the_face_through_padding_and_mirroring(blaze):
    from skimage import data

    image = data.astronaut()
    (face,) = faces(blaze, image)
    wide = np.zeros((512, 1312, 3), np.uint8)  # letterboxed with bands above and below
    wide[:, 400:912] = image  # and the face now 7 % of the width: still found
    (moved,) = faces(blaze, wide)
    assert near(moved["box"], [face["box"][0] + 400, *face["box"][1:]]), moved
    (mirrored,) = faces(blaze, image[:, ::-1])
    x, y, w, h = face["box"]
    assert near(mirrored["box"], [512 - x - w, y, w, h], tol=4), mirrored
    nose = {p["name"]: p for p in mirrored["keypoints"]}["nose_tip"]
    assert abs(nose["x"] - (512 - face["keypoints"][2]["x"])) < 6


def test_anchors_match_the_model_outputs_and_weighted_nms_merges_overlaps():
    rt = import_runtime(MODEL_IMAGES / "face-blaze" / "runtime.py")
    assert rt.anchors(192).shape == (2304, 2) and rt.anchors(128, ((8, 2), (16, 6))).shape[0] == 896
    assert np.allclose(
        rt.anchors(192)[[0, 1, 48]], [[1 / 96, 1 / 96], [3 / 96, 1 / 96], [1 / 96, 3 / 96]]
    )
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    points = np.array([[2, 2], [6, 6], [55, 55]], np.float32)
    scores = np.array([0.9, 0.3, 0.8])
    (box, pts, score), (box2, _, score2) = rt.weighted_nms(boxes, points, scores, 0.3)
    assert np.allclose(box, [0.25, 0.25, 10.25, 10.25]) and np.allclose(pts, [3, 3])
    assert score == 0.9 and score2 == 0.8 and np.allclose(box2, boxes[2])
    assert len(rt.weighted_nms(boxes, points, scores, 1.0)) == 3  # nothing merged, and it ends


def test_selftest_face_blaze(blaze_home):
    proc = evc_infer("--selftest", "--home", blaze_home)
    report = selftest_report(proc)
    assert proc.returncode == 0 and report["selftest"] == "ok", proc.stdout + proc.stderr
    assert report["detections"] == 1
