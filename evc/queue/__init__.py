"""EVC's work queue: its own Redis (:mod:`.server`), who may do what on it (:mod:`.acl`),
and the pull-mode stream protocol (:mod:`.streams`).

``sync_acl(ws)`` is what the device enrol and remove paths call to bring the Redis users
in line with the devices table (and ``evc queue up`` calls it on every run).
"""

from evc.queue.server import sync_acl

__all__ = ["sync_acl"]
