"""Ultralytics YOLO weights (.pt) on torch, for GPU nodes: the image's base carries CUDA.

Runs on CUDA device 0 when torch sees one, else on the CPU.
"""

from pathlib import Path

import numpy as np


def to_detections(xyxy, scores, class_ids, names: dict) -> list[dict]:
    """Ultralytics boxes (xyxy, conf, cls as arrays) as contract detections (x, y, w, h)."""
    boxes = np.asarray(xyxy, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    class_ids = np.asarray(class_ids).astype(int).reshape(-1)
    return [
        {
            "label": str(names.get(int(c), f"class{int(c)}")),
            "class_id": int(c),
            "score": float(s),
            "box": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
        }
        for (x1, y1, x2, y2), s, c in zip(boxes, scores, class_ids, strict=True)
    ]


class UltralyticsModel:
    def __init__(self, weights: Path):
        import torch
        from ultralytics import YOLO

        self.torch = torch
        self.device = 0 if torch.cuda.is_available() else "cpu"
        self.model = YOLO(str(weights))

    def predict(self, image_rgb: np.ndarray, conf: float, iou: float, imgsz: int) -> list[dict]:
        bgr = np.ascontiguousarray(image_rgb[..., ::-1])  # ultralytics reads arrays as BGR
        (result,) = self.model.predict(
            bgr, conf=conf, iou=iou, imgsz=imgsz, device=self.device, verbose=False
        )
        names = result.names if isinstance(result.names, dict) else dict(enumerate(result.names))
        if result.boxes is None:
            return []
        b = result.boxes
        return to_detections(b.xyxy.cpu().numpy(), b.conf.cpu().numpy(), b.cls.cpu().numpy(), names)

    def versions(self) -> dict[str, str]:
        import ultralytics

        torch = self.torch
        found = {"torch": torch.__version__, "ultralytics": ultralytics.__version__}
        found["cuda"] = torch.version.cuda or "none"
        found["device"] = torch.cuda.get_device_name(0) if self.device == 0 else "cpu"
        return found


def load(model_dir: Path, config: dict) -> UltralyticsModel:
    return UltralyticsModel(model_dir / config["weights"]["file"])
