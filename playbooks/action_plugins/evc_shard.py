"""Action plugin: send a shard's archive straight over the open connection, then run
files/evc_shard.py on the node as ``python3 -c SOURCE ARGS`` (one SSH command), which
moves it into the model server's inbox and waits for its results, printed as JSON.
One task, one file transfer, no module payload: the copy module would add a stat and a
module run (about a second per shard), and a module makes the node unpack Ansible's
module code on every shard (about 0.3 CPU-s)."""

import json
import os
import shlex

from ansible.errors import AnsibleActionFail, AnsibleError
from ansible.plugins.action import ActionBase

with open(os.path.join(os.path.dirname(__file__), "..", "files", "evc_shard.py")) as _f:
    SOURCE = _f.read()
ARGS = ("serve_dir", "upload", "name", "container", "timeout", "stale_after")


class ActionModule(ActionBase):
    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = dict(self._task.args)
        src = args.pop("src", None)
        if not src or not os.path.isfile(src):
            raise AnsibleActionFail(f"evc_shard: src {src!r} is not a file on the controller")
        unknown = set(args) - set(ARGS)
        if unknown:
            raise AnsibleActionFail(f"evc_shard: unknown arguments {sorted(unknown)}")
        upload = f"{args['serve_dir']}/inbox/.{args['name']}.part"
        try:
            self._connection.put_file(src, upload)
        except AnsibleError as exc:  # e.g. dd: failed to open '…/inbox/….part'
            if "No such file or directory" not in str(exc):
                raise
            raise AnsibleActionFail(
                f"model container {args['container']} is not deployed: its job folder "
                f"{args['serve_dir']} is missing"
            ) from None
        args["upload"] = upload
        argv = ["python3", "-c", SOURCE]
        for key, value in args.items():
            argv += ["--" + key.replace("_", "-"), str(value)]
        done = self._low_level_execute_command(shlex.join(argv))
        try:
            answer = json.loads(done.get("stdout") or "")
        except ValueError:
            said = (done.get("stderr") or done.get("stdout") or "").strip()
            raise AnsibleActionFail(
                f"evc_shard: the node printed no answer (exit {done.get('rc')}): {said[-500:]}"
            ) from None
        result.update(answer, changed=not answer.get("failed"))
        return result
