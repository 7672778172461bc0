"""evc-infer: the one inference contract shared by every EVC model image.

A runtime (``runtime.py``) provides ``load(model_dir, config) -> model`` whose model has
``predict(image_rgb, conf, iou, imgsz) -> list[dict]`` and ``versions() -> dict``; this
package finds the inputs, decodes them, calls the model, and writes results.jsonl and
summary.json in one format whatever the runtime.
"""

__version__ = "1.0"


class UsageError(Exception):
    """Bad arguments or an unusable input/output folder (exit code 2)."""


class ModelError(Exception):
    """The runtime or its weights cannot be loaded (exit code 1)."""


def one_line(exc: BaseException) -> str:
    """An exception as one short line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
