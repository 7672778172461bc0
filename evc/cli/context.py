"""What most commands need first: the workspace they act on."""

from __future__ import annotations


def workspace(*, required: bool = True):
    """The current workspace (``EVC_HOME``, or the nearest ``evc.yaml`` upwards); without
    ``required``, None when there is none (or it cannot be read).

    ``evc.config`` is imported here, not at module level, so that `evc --help` stays fast.
    """
    from evc.config import Workspace
    from evc.errors import UsageError

    try:
        return Workspace.find()
    except UsageError:
        if required:
            raise
        return None
