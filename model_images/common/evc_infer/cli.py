"""Command line: ``evc-infer --input DIR --output DIR [...]``, ``--selftest``, ``--serve DIR``
and ``--pull DIR --queue DIR``."""

import argparse
import json
import sys
from pathlib import Path

from evc_infer import ModelError, UsageError
from evc_infer.home import default_home, load_config, load_model, resolve_params
from evc_infer.runner import prepare_output, run
from evc_infer.selftest import selftest
from evc_infer.serve import serve

SHOWN = ("count", "ok", "failed", "skipped", "elapsed_s", "throughput")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"evc-infer: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="evc-infer",
        description="Run the image's model over every image under --input; write "
        "results.jsonl and summary.json to --output.",
    )
    p.add_argument("--input", type=Path, help="folder of images (searched recursively)")
    p.add_argument("--output", type=Path, help="folder for results.jsonl and summary.json")
    p.add_argument("--conf", type=float, help="minimum score (default: model.yaml defaults)")
    p.add_argument("--iou", type=float, help="NMS IoU threshold (default: model.yaml defaults)")
    p.add_argument("--imgsz", type=int, help="inference size (default: model.yaml defaults)")
    p.add_argument("--home", type=Path, help="model home (default: $EVC_HOME_DIR or /opt/evc)")
    p.add_argument("--selftest", action="store_true", help="check the model on a built-in image")
    p.add_argument(
        "--serve", type=Path, metavar="DIR", help="run shards dropped into DIR/inbox (see serve.py)"
    )
    p.add_argument(
        "--pull",
        type=Path,
        metavar="DIR",
        help="pull shards of this model's jobs from the queue (--queue) and run them "
        "through the --serve server of DIR (see pull.py)",
    )
    p.add_argument("--queue", type=Path, metavar="DIR", help="with --pull: queue.json and ca.crt")
    p.add_argument(
        "--stale-after",
        type=float,
        default=None,
        metavar="S",
        help="with --pull: seconds of model-server silence before a shard is given back "
        "(default 120)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    home = args.home or default_home()
    if args.serve and (args.input or args.output or args.selftest):
        parser.error("--serve takes no --input, --output or --selftest")
    if bool(args.pull) != bool(args.queue) or (
        args.pull and (args.serve or args.input or args.output or args.selftest)
    ):
        parser.error("--pull DIR needs --queue DIR, and takes no other mode")
    if args.stale_after is not None and (not args.pull or args.stale_after <= 0):
        parser.error("--stale-after is a positive number of seconds, with --pull")
    if args.selftest:
        if args.input or args.output:
            parser.error("--selftest takes no --input or --output")
        return selftest(home, args.conf, args.iou, args.imgsz)
    if not (args.serve or args.pull) and (not args.input or not args.output):
        parser.error("--input and --output are required (or --selftest, --serve, --pull)")
    try:
        if args.serve:
            return serve(home, args.serve)
        if args.pull:
            from evc_infer.pull import STALE_AFTER_S, pull  # needs redis-py

            return pull(home, args.pull, args.queue, stale_after=args.stale_after or STALE_AFTER_S)
        summary = _run(home, args)
    except UsageError as exc:
        print(f"evc-infer: error: {exc}", file=sys.stderr)
        return 2
    except ModelError as exc:
        print(f"evc-infer: cannot load the model: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({k: summary[k] for k in SHOWN}), flush=True)
    return 0


def _run(home: Path, args) -> dict:
    if not args.input.is_dir():
        raise UsageError(f"input folder {args.input} does not exist or is not a folder")
    config = load_config(home)
    params = resolve_params(config, args.conf, args.iou, args.imgsz)
    prepare_output(args.output)
    model, versions = load_model(home, config)
    return run(model, config, versions, args.input, args.output, params)
