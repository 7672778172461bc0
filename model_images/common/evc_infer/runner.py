"""One batch run: every input through the model, results.jsonl line by line, then summary.json."""

import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import PIL
from PIL import Image

import evc_infer
from evc_infer import UsageError, one_line
from evc_infer.inputs import DEFAULT_TYPES, DecodeError, decode_image, find_inputs


def finish_keypoint(point: dict, width: int, height: int) -> dict:
    """A keypoint in contract form: clipped to the image, rounded to 0.1 px."""
    x, y = (float(point[k]) for k in ("x", "y"))
    if not (math.isfinite(x) and math.isfinite(y)):
        raise ValueError(f"keypoint {point.get('name')!r} is not a finite point")
    return {
        "name": str(point["name"]),
        "x": round(min(max(x, 0.0), width), 1),
        "y": round(min(max(y, 0.0), height), 1),
    }


def finish_detection(det: dict, width: int, height: int) -> dict | None:
    """A runtime's detection in contract form: box (and keypoints, where the runtime gives
    them) clipped to the image, rounded to 0.1 px.

    None for a box with no area left inside the image.
    """
    x, y, w, h = (float(v) for v in det["box"])
    if not all(map(math.isfinite, (x, y, w, h))):
        return None
    x1, x2 = (round(min(max(v, 0.0), width), 1) for v in (x, x + w))
    y1, y2 = (round(min(max(v, 0.0), height), 1) for v in (y, y + h))
    if x2 <= x1 or y2 <= y1:
        return None
    out = {
        "label": str(det["label"]),
        "class_id": int(det["class_id"]),
        "score": round(min(max(float(det["score"]), 0.0), 1.0), 4),
        "box": [x1, y1, round(x2 - x1, 1), round(y2 - y1, 1)],
    }
    if det.get("keypoints") is not None:
        out["keypoints"] = [finish_keypoint(p, width, height) for p in det["keypoints"]]
    return out


def infer_one(model, path: Path, item: str, params: dict, max_pixels: int) -> dict:
    """The results.jsonl record of one input; never raises for a bad image or a model error."""
    record = {"item": item, "ok": False, "error": None, "latency_ms": 0.0}
    record.update(width=None, height=None, detections=[])
    start = time.perf_counter()
    try:
        image = decode_image(path, max_pixels)
        record["height"], record["width"] = (int(n) for n in image.shape[:2])
        raw = model.predict(image, **params)
        found = (finish_detection(d, record["width"], record["height"]) for d in raw)
        record["detections"] = [d for d in found if d is not None]
        record["ok"] = True
    except DecodeError as exc:
        record["error"] = str(exc)
    except Exception as exc:
        record["error"] = f"model error: {type(exc).__name__}: {one_line(exc)}"
    record["latency_ms"] = round((time.perf_counter() - start) * 1000, 2)
    return record


def warm_up(model, params: dict) -> None:
    """One untimed call on a blank image (and Pillow's plugins loaded): first-call costs
    such as lazy initialisation and memory arenas stay out of the first item's latency."""
    Image.init()
    try:
        model.predict(np.zeros((320, 320, 3), np.uint8), **params)
    except Exception:
        pass  # a model that fails here fails on the real items too, and says why there


def _latency(values: list[float]) -> dict:
    if not values:
        return {"mean": None, "p50": None, "p95": None}
    arr = np.asarray(values)
    stats = {"mean": arr.mean(), "p50": np.percentile(arr, 50), "p95": np.percentile(arr, 95)}
    return {k: round(float(v), 2) for k, v in stats.items()}


def prepare_output(output_dir: Path) -> Path:
    """The output folder, created and resolved; UsageError when it cannot be written."""
    try:
        out = output_dir.resolve()
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.jsonl").touch()
    except OSError as exc:
        raise UsageError(f"output folder {output_dir} is not writable: {one_line(exc)}") from None
    return out


def run(
    model,
    config: dict,
    runtime_versions: dict,
    input_dir: Path,
    output_dir: Path,
    params: dict,
) -> dict:
    """Infer every input under ``input_dir``; write and return the summary."""
    root, out = input_dir.resolve(), prepare_output(output_dir)
    items, skipped = find_inputs(root, config.get("input_types") or DEFAULT_TYPES, exclude=out)
    results = (out / "results.jsonl").open("w")
    warm_up(model, params)
    started, t0 = time.time(), time.perf_counter()
    latencies = []
    with results:
        for item in items:
            record = infer_one(model, root / item, item, params, config["limits"]["max_pixels"])
            results.write(json.dumps(record) + "\n")
            results.flush()
            if record["ok"]:
                latencies.append(record["latency_ms"])
    elapsed = time.perf_counter() - t0
    summary = {
        "runtime": config["name"],
        "model": config.get("model"),
        "count": len(items),
        "ok": len(latencies),
        "failed": len(items) - len(latencies),
        "skipped": len(skipped),
        "skipped_items": skipped,
        "elapsed_s": round(elapsed, 3),
        "throughput": round(len(items) / elapsed, 3) if items and elapsed > 0 else 0.0,
        "latency_ms": _latency(latencies),
        "params": params,
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "pillow": PIL.__version__,
            "evc_infer": evc_infer.__version__,
            **runtime_versions,
        },
        "started": started,
        "finished": time.time(),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
