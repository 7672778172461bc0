"""What most commands need first: the workspace they act on."""

from __future__ import annotations


def workspace():
    """The current workspace (``EVC_HOME``, or the nearest ``evc.yaml`` upwards).

    ``evc.config`` is imported here, not at module level, so that `evc --help` stays fast.
    """
    from evc.config import Workspace

    return Workspace.find()
