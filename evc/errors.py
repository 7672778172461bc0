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


class Result:
    """Mixin of every fleet operation's result: ``ok`` decides ``exit_code`` (0, else 1),
    so the CLI and run-configs decide success in one place."""

    @property
    def ok(self) -> bool:
        raise NotImplementedError

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1
