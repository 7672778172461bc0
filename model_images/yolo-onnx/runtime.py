"""YOLOv8/YOLO11-style ONNX detectors on onnxruntime: Pillow letterbox, numpy decode and NMS.

No torch and no OpenCV. Class names come from the ONNX metadata that Ultralytics writes.
"""

import ast
from pathlib import Path

import numpy as np
import onnxruntime as ort
from evc_infer.inputs import letterbox, unletterbox

PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
PAD = 114  # the grey Ultralytics letterboxes with
MAX_DET = 300


def parse_names(meta: dict) -> dict[int, str]:
    """Class names from the metadata ``names`` (a dict or list literal); {} when absent or bad."""
    try:
        names = ast.literal_eval(meta.get("names") or "{}")
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return {}
    if isinstance(names, list | tuple):
        names = dict(enumerate(names))
    if not isinstance(names, dict):
        return {}
    try:
        return {int(k): str(v) for k, v in names.items()}
    except (TypeError, ValueError):
        return {}


def is_end2end(meta: dict) -> bool:
    """True when the graph already did NMS: rows of (x1, y1, x2, y2, score, class)."""
    if meta.get("end2end") == "True":
        return True
    try:
        args = ast.literal_eval(meta.get("args") or "{}")
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False
    return isinstance(args, dict) and args.get("nms") is True


def decode(output: np.ndarray, conf: float, end2end: bool, nc: int | None = None):
    """(boxes_xyxy, scores, class_ids) above ``conf`` from one image's raw output.

    The YOLOv8/11 head gives [1, 4+nc, N] (cx, cy, w, h, class scores), some exports the
    transpose [1, N, 4+nc]; end-to-end graphs give [1, N, 6] rows of x1, y1, x2, y2, score, class.
    """
    pred = np.asarray(output, np.float32)[0]
    if end2end:
        pred = pred[pred[:, 4] >= conf]
        return pred[:, :4], pred[:, 4], pred[:, 5].astype(int)
    channels_first = pred.shape[0] == 4 + nc if nc else pred.shape[0] < pred.shape[1]
    if channels_first:
        pred = pred.T
    class_ids = pred[:, 4:].argmax(1)
    scores = pred[np.arange(len(pred)), 4 + class_ids]
    keep = scores >= conf
    cx, cy, w, h = pred[keep, :4].T
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    return boxes, scores[keep], class_ids[keep]


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float, class_ids=None, max_det=MAX_DET):
    """Indices kept by greedy NMS, best first; a box never suppresses one of another class."""
    if len(boxes) == 0:
        return np.empty(0, int)
    if class_ids is not None:  # shift each class to its own region so classes cannot overlap
        boxes = boxes + (np.asarray(class_ids)[:, None] * (boxes.max() - boxes.min() + 1))
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1).clip(0) * (y2 - y1).clip(0)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size and len(keep) < max_det:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = (np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest])).clip(0)
        h = (np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest])).clip(0)
        inter = w * h
        order = rest[inter / (areas[i] + areas[rest] - inter + 1e-9) <= iou]
    return np.array(keep, int)


class OnnxDetector:
    def __init__(self, path: Path):
        available = ort.get_available_providers()
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(path), options, providers=[p for p in PREFERRED_PROVIDERS if p in available]
        )
        meta = self.session.get_modelmeta().custom_metadata_map
        self.names = parse_names(meta)
        self.end2end = is_end2end(meta)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        hw = inp.shape[2:4]
        self.fixed_size = tuple(hw) if all(isinstance(v, int) and v > 0 for v in hw) else None

    def predict(self, image_rgb: np.ndarray, conf: float, iou: float, imgsz: int) -> list[dict]:
        side = -(-imgsz // 32) * 32  # a dynamic input still wants a multiple of the stride
        canvas, scale, pad = letterbox(image_rgb, self.fixed_size or (side, side), PAD)
        x = np.ascontiguousarray(canvas.transpose(2, 0, 1)[None], dtype=self.dtype)
        x /= 255
        output = self.session.run(None, {self.input_name: x})[0]
        boxes, scores, class_ids = decode(output, conf, self.end2end, len(self.names) or None)
        if not self.end2end:
            keep = nms(boxes, scores, iou, class_ids)
            boxes, scores, class_ids = boxes[keep], scores[keep], class_ids[keep]
        boxes = unletterbox(boxes, scale, pad)
        return [
            {
                "label": self.names.get(int(c), f"class{int(c)}"),
                "class_id": int(c),
                "score": float(s),
                "box": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
            }
            for (x1, y1, x2, y2), s, c in zip(boxes, scores, class_ids, strict=True)
        ]

    def versions(self) -> dict[str, str]:
        return {
            "onnxruntime": ort.__version__,
            "onnxruntime_providers": ",".join(self.session.get_providers()),
        }


def load(model_dir: Path, config: dict) -> OnnxDetector:
    return OnnxDetector(model_dir / config["weights"]["file"])
