#!/usr/bin/python3
"""Ansible module: hand a shard to the model container's server (``evc-infer
--serve``, see model_images/common/evc_infer/serve.py) and wait on the node for its
results, which it returns. Its action plugin (action_plugins/evc_shard.py) has
uploaded the archive to ``upload``; a rename puts it in the inbox whole.

Fails fast when the container is not running or its server stopped beating, when
the shard leaves the inbox unanswered (the server deletes a shard only after writing
its answer, so the controller's cleanup withdrew it: this module is left over from an
interrupted run), and on timeout; on any failure the shard's files are removed so
nothing runs late. NAME is unique per dispatch: no other module reads this answer.
"""

import os
import time

from ansible.module_utils.basic import AnsibleModule

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


def _container_running(module, name):
    rc, out, _ = module.run_command(["docker", "inspect", "-f", "{{.State.Running}}", name])
    return rc == 0 and out.strip() == "true"


def main():
    module = AnsibleModule(
        argument_spec={
            "serve_dir": {"type": "path", "required": True},
            "upload": {"type": "path", "required": True},
            "name": {"type": "str", "required": True},
            "container": {"type": "str", "required": True},
            "timeout": {"type": "float", "default": 300},
            "stale_after": {"type": "float", "default": 120},
        }
    )
    p = module.params
    inbox = os.path.join(p["serve_dir"], "inbox", p["name"] + ".tar")
    results = os.path.join(p["serve_dir"], "outbox", p["name"] + ".jsonl")
    error = os.path.join(p["serve_dir"], "outbox", p["name"] + ".error")
    alive = os.path.join(p["serve_dir"], "serve.alive")
    start = time.time()
    checked = 0.0
    gone_since = None
    _hand_over(p["upload"], inbox)

    def fail(msg):
        _remove(p["upload"], inbox, results, error)
        module.fail_json(msg=msg, waited_s=round(time.time() - start, 2))

    while True:
        if os.path.exists(results):
            text = _read_and_remove(results)
            module.exit_json(changed=True, jsonl=text, waited_s=round(time.time() - start, 2))
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
            if not _container_running(module, p["container"]):
                fail(f"model container {p['container']} is not running")
            try:
                silent = now - os.stat(alive).st_mtime
            except FileNotFoundError:
                silent = now - start
            if silent > p["stale_after"]:
                fail(f"the model server in {p['container']} has not answered for {silent:.0f} s")
        if now - start > p["timeout"]:
            fail(f"no results after {p['timeout']:.0f} s")
        time.sleep(POLL_S)


if __name__ == "__main__":
    main()
