"""Errors the CLI turns into a one-paragraph message and an exit code (never a traceback)."""


class EVCError(Exception):
    """Something in the environment is wrong (no Docker engine, a failed build): exit 1."""

    exit_code = 1


class UsageError(EVCError):
    """The user asked for something invalid (bad option, unknown name): exit 2."""

    exit_code = 2


class Interrupted(EVCError):
    """Ctrl-C during long work (an inference job): what was pending stays pending."""

    exit_code = 130
