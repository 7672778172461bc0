"""Face detection with OpenCV's pretrained frontal-face Haar cascade (it ships in the wheel).

conf and iou are accepted but change nothing: a cascade gives no scores (every face
scores 1.0) and groups overlapping windows itself. imgsz caps the longest side: larger
images are shrunk to it before detection, which bounds the time per image.
"""

from pathlib import Path

import cv2
import numpy as np

CASCADE = "haarcascade_frontalface_default.xml"


class HaarFaces:
    def __init__(self, cascade: Path):
        self.cascade = cv2.CascadeClassifier(str(cascade))
        if self.cascade.empty():
            raise RuntimeError(f"OpenCV cannot load the cascade {cascade}")

    def predict(self, image_rgb: np.ndarray, conf: float, iou: float, imgsz: int) -> list[dict]:
        gray = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2GRAY)
        scale = min(1.0, imgsz / max(gray.shape))
        if scale < 1.0:
            gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        faces = self.cascade.detectMultiScale(
            cv2.equalizeHist(gray), scaleFactor=1.1, minNeighbors=5, minSize=(30, 30)
        )
        return [
            {"label": "face", "class_id": 0, "score": 1.0, "box": [float(v) / scale for v in face]}
            for face in faces
        ]

    def versions(self) -> dict[str, str]:
        return {"opencv": cv2.__version__}


def load(model_dir: Path, config: dict) -> HaarFaces:
    return HaarFaces(Path(cv2.data.haarcascades) / CASCADE)
