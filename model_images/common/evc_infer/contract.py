"""Does an output folder follow the contract: every field, every type, boxes in the image."""

import json
from pathlib import Path

NUMBER = (int, float)
RESULT_FIELDS = {
    "item": (str,),
    "ok": (bool,),
    "error": (str, type(None)),
    "latency_ms": NUMBER,
    "width": (int, type(None)),
    "height": (int, type(None)),
    "detections": (list,),
}
DETECTION_FIELDS = {"label": (str,), "class_id": (int,), "score": NUMBER, "box": (list,)}
OPTIONAL_FIELDS = {"keypoints": (list,)}  # named points of the object, where the model has them
KEYPOINT_FIELDS = {"name": (str,), "x": NUMBER, "y": NUMBER}
SUMMARY_FIELDS = {
    "runtime": (str,),
    "model": (dict, type(None)),
    "count": (int,),
    "ok": (int,),
    "failed": (int,),
    "skipped": (int,),
    "skipped_items": (list,),
    "elapsed_s": NUMBER,
    "throughput": NUMBER,
    "latency_ms": (dict,),
    "params": (dict,),
    "versions": (dict,),
    "started": NUMBER,
    "finished": NUMBER,
}
SLACK = 0.05  # rounding to 0.1 px may put x + w a hair past the edge


def _is(value, types) -> bool:
    """isinstance, except that a bool is not a number."""
    return isinstance(value, types) and (bool in types or not isinstance(value, bool))


def _fields(obj, fields: dict, where: str, optional: dict | None = None) -> list[str]:
    if not isinstance(obj, dict):
        return [f"{where}: not an object"]
    known = {**fields, **(optional or {})}
    problems = [f"{where}: missing {k}" for k in fields if k not in obj]
    problems += [f"{where}: unexpected {k}" for k in obj if k not in known]
    problems += [
        f"{where}: {k} is {type(obj[k]).__name__}"
        for k, types in known.items()
        if k in obj and not _is(obj[k], types)
    ]
    return problems


def _inside(x, y, width: int, height: int) -> bool:
    return -SLACK <= x <= width + SLACK and -SLACK <= y <= height + SLACK


def check_keypoints(points: list, width: int, height: int, where: str) -> list[str]:
    problems = []
    for i, point in enumerate(points):
        found = _fields(point, KEYPOINT_FIELDS, f"{where} keypoint {i}")
        if not found and not _inside(point["x"], point["y"], width, height):
            found = [f"{where} keypoint {i}: ({point['x']}, {point['y']}) not inside the image"]
        problems += found
    return problems


def check_detection(det, width: int, height: int, where: str) -> list[str]:
    problems = _fields(det, DETECTION_FIELDS, where, OPTIONAL_FIELDS)
    if problems:
        return problems
    problems = check_keypoints(det.get("keypoints", []), width, height, where)
    if not 0 <= det["score"] <= 1:
        problems.append(f"{where}: score {det['score']} outside 0..1")
    box = det["box"]
    if len(box) != 4 or not all(_is(v, NUMBER) for v in box):
        return [*problems, f"{where}: box is not four numbers"]
    x, y, w, h = box
    if x < 0 or y < 0 or w <= 0 or h <= 0 or x + w > width + SLACK or y + h > height + SLACK:
        problems.append(f"{where}: box {box} not inside the {width}x{height} image")
    return problems


def check_record(rec, where: str) -> list[str]:
    problems = _fields(rec, RESULT_FIELDS, where)
    if problems:
        return problems
    if rec["ok"] != (rec["error"] is None):
        problems.append(f"{where}: ok is {rec['ok']} but error is {rec['error']!r}")
    if not rec["ok"]:
        return problems + ([f"{where}: a failed item has detections"] if rec["detections"] else [])
    width, height = rec["width"], rec["height"]
    if width is None or height is None or width < 1 or height < 1:
        return [*problems, f"{where}: an ok item needs its width and height"]
    for i, det in enumerate(rec["detections"]):
        problems += check_detection(det, width, height, f"{where} detection {i}")
    return problems


def check_summary(summary, records: list) -> list[str]:
    problems = _fields(summary, SUMMARY_FIELDS, "summary.json")
    if problems:
        return problems
    ok = sum(1 for r in records if isinstance(r, dict) and r.get("ok") is True)
    counts = (summary["count"], summary["ok"], summary["failed"])
    if counts != (len(records), ok, len(records) - ok):
        problems.append(f"summary.json: count/ok/failed {counts} do not match results.jsonl")
    if summary["skipped"] != len(summary["skipped_items"]):
        problems.append("summary.json: skipped does not match skipped_items")
    latency = summary["latency_ms"]
    if set(latency) != {"mean", "p50", "p95"} or not all(
        v is None or _is(v, NUMBER) for v in latency.values()
    ):
        problems.append("summary.json: latency_ms needs mean, p50, p95 (numbers or null)")
    params = summary["params"]
    if set(params) != {"conf", "iou", "imgsz"} or not all(_is(v, NUMBER) for v in params.values()):
        problems.append("summary.json: params needs numbers conf, iou, imgsz")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in summary["versions"].items()):
        problems.append("summary.json: versions must map names to strings")
    if summary["finished"] < summary["started"]:
        problems.append("summary.json: finished before started")
    return problems


def check_output(output_dir: Path) -> tuple[list[str], list[dict], dict | None]:
    """(problems, records, summary) of an output folder."""
    try:
        lines = (output_dir / "results.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]
        summary = json.loads((output_dir / "summary.json").read_text())
    except (OSError, ValueError) as exc:
        return [f"cannot read the output: {exc}"], [], None
    problems = []
    for n, rec in enumerate(records, 1):
        problems += check_record(rec, f"results.jsonl line {n}")
    return problems + check_summary(summary, records), records, summary
