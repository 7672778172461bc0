"""Action plugin: send a shard's archive straight over the open connection, then run
the ``evc_shard`` module, which moves it into the model server's inbox and waits for
its results. One task, one file transfer: the copy module would add a stat and a
module run (about a second per shard)."""

import os

from ansible.errors import AnsibleActionFail, AnsibleError
from ansible.plugins.action import ActionBase


class ActionModule(ActionBase):
    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = dict(self._task.args)
        src = args.pop("src", None)
        if not src or not os.path.isfile(src):
            raise AnsibleActionFail(f"evc_shard: src {src!r} is not a file on the controller")
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
        result.update(self._execute_module("evc_shard", module_args=args, task_vars=task_vars))
        return result
