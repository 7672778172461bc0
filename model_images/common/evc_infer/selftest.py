"""``evc-infer --selftest``: the built-in sample through the normal path, then the checks."""

import json
import shutil
import tempfile
from pathlib import Path

from evc_infer import ModelError, UsageError, one_line
from evc_infer.contract import check_output
from evc_infer.home import load_config, load_model, resolve_params
from evc_infer.runner import run

SAMPLE = Path(__file__).with_name("sample.jpg")
EXPECTATIONS = {"min_detections", "label"}


def check_expectations(expect: dict, detections: list[dict]) -> list[str]:
    """model.yaml `selftest`: at least `min_detections` detections (of `label`, if given)."""
    unknown = sorted(set(expect) - EXPECTATIONS)
    if unknown:
        return [f"unknown selftest expectation(s): {', '.join(unknown)}"]
    label = expect.get("label")
    found = [d for d in detections if label is None or d["label"] == label]
    wanted = int(expect.get("min_detections", 0))
    if len(found) < wanted:
        what = f"{label!r} detections" if label else "detections"
        return [f"expected at least {wanted} {what}, found {len(found)}"]
    return []


def selftest(home: Path, conf=None, iou=None, imgsz=None) -> int:
    """Print one JSON line; 0 when the output is well-formed and the expectations hold."""
    report = {"selftest": "failed", "reason": None, "detections": 0, "latency_ms": None}
    try:
        config = load_config(home)
        params = resolve_params(config, conf, iou, imgsz)
        model, versions = load_model(home, config)
        with tempfile.TemporaryDirectory(prefix="evc-selftest-") as tmp:
            inp, out = Path(tmp) / "input", Path(tmp) / "output"
            inp.mkdir()
            shutil.copy(SAMPLE, inp / SAMPLE.name)
            run(model, config, versions, inp, out, params)
            problems, records, _ = check_output(out)
        if not problems and (len(records) != 1 or not records[0]["ok"]):
            why = records[0]["error"] if records else "no result"
            problems = [f"the sample did not infer: {why}"]
        if not problems:
            record = records[0]
            report.update(detections=len(record["detections"]), latency_ms=record["latency_ms"])
            problems = check_expectations(config.get("selftest") or {}, record["detections"])
    except (UsageError, ModelError) as exc:
        problems = [str(exc)]
    except OSError as exc:  # e.g. no writable temp folder
        problems = [f"selftest I/O: {one_line(exc)}"]
    if problems:
        report["reason"] = "; ".join(problems[:5])
    else:
        report["selftest"] = "ok"
    print(json.dumps(report), flush=True)
    return 0 if report["selftest"] == "ok" else 1
