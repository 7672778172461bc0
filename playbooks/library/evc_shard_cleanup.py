#!/usr/bin/python3
"""Ansible module: remove a job's shard files from a model's job folder on the node.

In ``inbox/``: complete shards (``PREFIX*.tar``) and uploads (``.PREFIX*.part``); in
``outbox/``: answers (``PREFIX*.jsonl``, ``PREFIX*.error``). Not the server's own
``outbox/.NAME.part``, which it is renaming into place. Removing a shard from the
inbox is how the protocol withdraws it (model_images/common/evc_infer/serve.py): the
server then writes no answer. A missing folder is nothing to remove. Runs on the
node's python3 (3.8 at least): no newer syntax.
"""

import os

from ansible.module_utils.basic import AnsibleModule


def _matches(folder, name, prefix):
    if folder == "inbox":
        return (name.startswith(prefix) and name.endswith(".tar")) or (
            name.startswith("." + prefix) and name.endswith(".part")
        )
    return name.startswith(prefix) and name.endswith((".jsonl", ".error"))


def main():
    module = AnsibleModule(
        argument_spec={
            "serve_dir": {"type": "path", "required": True},
            "prefix": {"type": "str", "required": True},
        }
    )
    prefix = module.params["prefix"]
    if not prefix or "/" in prefix or prefix.startswith("."):
        module.fail_json(msg=f"prefix must be a job's name prefix, got {prefix!r}")
    removed = []
    for folder in ("inbox", "outbox"):
        path = os.path.join(module.params["serve_dir"], folder)
        try:
            names = os.listdir(path)
        except FileNotFoundError:
            continue
        for name in sorted(names):
            if _matches(folder, name, prefix):
                try:
                    os.unlink(os.path.join(path, name))
                    removed.append(folder + "/" + name)
                except FileNotFoundError:  # the server or a waiting module was first
                    pass
    module.exit_json(changed=bool(removed), removed=removed)


if __name__ == "__main__":
    main()
