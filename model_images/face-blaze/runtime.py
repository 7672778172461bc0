"""Faces and six face keypoints with MediaPipe's BlazeFace (full range) on LiteRT, the
TFLite runtime.

The model is the one MediaPipe's face detection runs, taken out of MediaPipe's wheel at
build time (model.yaml `packaged_weights`); no MediaPipe in the image. This is the
decoding MediaPipe's graph does: letterbox to the model's square input, SSD anchors,
sigmoid scores, then weighted non-maximum suppression (overlapping boxes are averaged,
weighted by score). conf is the minimum score, iou the suppression overlap; imgsz is
ignored (the input is the model's 192 px square).
"""

from importlib.metadata import version
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter
from evc_infer.inputs import letterbox, unletterbox

# The full-range model (faces up to about 5 m from the camera, down to some 6 % of the
# image's longest side), the one MediaPipe's face_detection_full_range graph runs; its SSD
# anchors on the 192 px input: (stride, anchors per cell), each anchor a cell centre.
MODEL = "face_detection_full_range_sparse.tflite"
ANCHORS = ((4, 1),)
KEYPOINTS = ("right_eye", "left_eye", "nose_tip", "mouth_center", "right_ear", "left_ear")


def anchors(size: int, layout=ANCHORS) -> np.ndarray:
    """[N, 2] anchor centres (x, y) in 0..1, in the order of the model's outputs."""
    out = []
    for stride, per_cell in layout:
        cells = -(-size // stride)
        ys, xs = np.mgrid[0:cells, 0:cells]
        centres = (np.stack([xs.ravel(), ys.ravel()], 1) + 0.5) / cells
        out.append(np.repeat(centres, per_cell, axis=0))
    return np.concatenate(out).astype(np.float32)


def decode(raw: np.ndarray, logits: np.ndarray, centres: np.ndarray, size: int, conf: float):
    """(boxes [M, 4] x1 y1 x2 y2, keypoints [M, 12] x y ..., scores [M]) above ``conf``, in
    canvas pixels, from one image's regressors [N, 16] and logits [N, 1]."""
    scores = 1 / (1 + np.exp(-logits[:, 0].astype(np.float64).clip(-100, 100)))
    keep = scores >= conf
    raw, centres, scores = raw[keep] / size, centres[keep], scores[keep]
    cx, cy = raw[:, 0] + centres[:, 0], raw[:, 1] + centres[:, 1]
    w, h = raw[:, 2], raw[:, 3]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1) * size
    points = (raw[:, 4:16] + np.tile(centres, len(KEYPOINTS))) * size
    return boxes, points, scores


def iou_with(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection over union of one x1 y1 x2 y2 box with each of ``boxes``."""
    lo, hi = np.maximum(box[:2], boxes[:, :2]), np.minimum(box[2:], boxes[:, 2:])
    inter = (hi - lo).clip(0).prod(1)
    area = (box[2:] - box[:2]).clip(0).prod()
    return inter / (area + (boxes[:, 2:] - boxes[:, :2]).clip(0).prod(1) - inter + 1e-9)


def weighted_nms(boxes: np.ndarray, points: np.ndarray, scores: np.ndarray, iou: float):
    """MediaPipe's weighted NMS: the best box absorbs every box overlapping it by more than
    ``iou``; the result is their score-weighted mean (keypoints too) with the best score."""
    order = np.argsort(-scores, kind="stable")
    out = []
    while order.size:
        merge = iou_with(boxes[order[0]], boxes[order]) > iou
        merge[0] = True  # the best box itself, whatever iou is (1.0 merges nothing else)
        group, order = order[merge], order[~merge]
        weights = scores[group][:, None] / scores[group].sum()
        merged = (boxes[group] * weights).sum(0), (points[group] * weights).sum(0)
        out.append((*merged, scores[group[0]]))
    return out


class BlazeFace:
    def __init__(self, path: Path):
        self.interpreter = Interpreter(model_path=str(path), num_threads=1)
        self.interpreter.allocate_tensors()
        (inp,) = self.interpreter.get_input_details()
        self.input_index, self.size = inp["index"], int(inp["shape"][1])
        outputs = {int(d["shape"][-1]): d["index"] for d in self.interpreter.get_output_details()}
        self.regressors, self.classificators = outputs[16], outputs[1]
        self.centres = anchors(self.size)

    def predict(self, image_rgb: np.ndarray, conf: float, iou: float, imgsz: int) -> list[dict]:
        canvas, scale, pad = letterbox(image_rgb, (self.size, self.size), 0)
        x = canvas[None].astype(np.float32) / 127.5 - 1
        self.interpreter.set_tensor(self.input_index, x)
        self.interpreter.invoke()
        raw = self.interpreter.get_tensor(self.regressors)[0]
        logits = self.interpreter.get_tensor(self.classificators)[0]
        boxes, points, scores = decode(raw, logits, self.centres, self.size, conf)
        found = []
        for box, pts, score in weighted_nms(boxes, points, scores, iou):
            x1, y1, x2, y2 = unletterbox(box, scale, pad)
            xy = unletterbox(pts, scale, pad).reshape(-1, 2)
            found.append({
                "label": "face", "class_id": 0, "score": float(score),
                "box": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                "keypoints": [
                    {"name": name, "x": float(px), "y": float(py)}
                    for name, (px, py) in zip(KEYPOINTS, xy, strict=True)
                ],
            })  # fmt: skip
        return found

    def versions(self) -> dict[str, str]:
        return {"ai_edge_litert": version("ai-edge-litert")}


def load(model_dir: Path, config: dict) -> BlazeFace:
    return BlazeFace(model_dir / MODEL)
