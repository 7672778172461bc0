#!/usr/bin/env python3
"""Hand a shard to the model container's server (``evc-infer --serve``, see
model_images/common/evc_infer/serve.py) and wait on the node for its results; print
one JSON object: ``{"jsonl": ..., "waited_s": ...}``, or ``{"failed": true, "msg":
...}`` with exit 1. Run on the node as ``python3 -c SOURCE ARGS`` by the evc_shard
action plugin (action_plugins/evc_shard.py), which has uploaded the archive to
``--upload``; a rename puts it in the inbox whole. Stdlib only, python3 3.8 at least:
not a module, whose payload the node would unpack on every shard.

Fails fast when the container is not running or its server stopped beating, when
the shard leaves the inbox unanswered (the server deletes a shard only after writing
its answer, so the controller's cleanup withdrew it: this is left over from an
interrupted run), and on timeout; on any failure the shard's files are removed so
nothing runs late. NAME is unique per dispatch: nothing else reads this answer.
"""

import argparse
import json
import os
import subprocess
import sys
import time

POLL_S = 0.1
CHECK_CONTAINER_S = 5.0
WITHDRAWN_AFTER_S = 5.0  # the server writes the answer just after it removes the shard


def _read_and_remove(path):
    with open(path) as f:
        text = f.read()
    os.unlink(path)
    return text


def _remove(*paths):
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _hand_over(upload, inbox):
    """Rename the upload into the inbox, owned by the inbox's owner (the model container's
    unprivileged user) and private to it, whatever mode the transfer left it with."""
    owner = os.stat(os.path.dirname(inbox))
    os.chown(upload, owner.st_uid, owner.st_gid)
    os.chmod(upload, 0o600)
    os.replace(upload, inbox)


def _container_running(name):
    proc = subprocess.run(
        ["docker", "inspect", "-f", "{{.State.Running}}", name],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, universal_newlines=True,
    )  # fmt: skip
    return proc.returncode == 0 and proc.stdout.strip() == "true"


def _print(answer, code):
    sys.stdout.write(json.dumps(answer))
    sys.exit(code)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve-dir", required=True)
    parser.add_argument("--upload", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--container", required=True)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--stale-after", type=float, default=120)
    p = parser.parse_args()
    inbox = os.path.join(p.serve_dir, "inbox", p.name + ".tar")
    results = os.path.join(p.serve_dir, "outbox", p.name + ".jsonl")
    error = os.path.join(p.serve_dir, "outbox", p.name + ".error")
    alive = os.path.join(p.serve_dir, "serve.alive")
    start = time.time()
    checked = 0.0
    gone_since = None

    def fail(msg):
        _remove(p.upload, inbox, results, error)
        _print({"failed": True, "msg": msg, "waited_s": round(time.time() - start, 2)}, 1)

    try:
        _hand_over(p.upload, inbox)
    except OSError as exc:
        fail("could not hand the shard to the model server: %s" % exc)
    while True:
        if os.path.exists(results):
            text = _read_and_remove(results)
            _print({"jsonl": text, "waited_s": round(time.time() - start, 2)}, 0)
        if os.path.exists(error):
            fail("the model server refused the shard: " + _read_and_remove(error))
        now = time.time()
        if os.path.exists(inbox):
            gone_since = None
        elif gone_since is None:
            gone_since = now
        elif now - gone_since > WITHDRAWN_AFTER_S:
            fail(
                "the shard left the inbox unanswered (withdrawn by the controller's cleanup, "
                "or dropped by the model server)"
            )
        if now - checked >= CHECK_CONTAINER_S:
            checked = now
            if not _container_running(p.container):
                fail("model container %s is not running" % p.container)
            try:
                silent = now - os.stat(alive).st_mtime
            except FileNotFoundError:
                silent = now - start
            if silent > p.stale_after:
                fail("the model server in %s has not answered for %.0f s" % (p.container, silent))
        if now - start > p.timeout:
            fail("no results after %.0f s" % p.timeout)
        time.sleep(POLL_S)


if __name__ == "__main__":
    main()
