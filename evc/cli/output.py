"""Printing fleet results: a per-host table and the exit code that goes with it."""

from __future__ import annotations

import typer

from evc.console import out, print_table, state


def print_run(run) -> None:
    """Per-host table of an evc.ansible.RunResult, then a one-line summary."""
    rows = [
        [host, state(r.state), str(r.ok), str(r.changed),
         str(r.failed), str(r.unreachable), r.message or ""]
        for host, r in sorted(run.hosts.items())
    ]  # fmt: skip
    print_table(
        f"{run.playbook} on {run.target}",
        ["host", "state", "ok", "changed", "failed", "unreachable", "message"],
        rows,
    )
    bad = len(run.failed_hosts)
    out.print(
        f"{run.status}: {len(run.hosts) - bad} of {len(run.hosts)} hosts fine "
        f"in {run.ended - run.started:.1f} s (artifacts: {run.artifacts_dir})",
        highlight=False,
    )


def exit_for(run) -> None:
    """Exit non-zero when any targeted host failed or was unreachable."""
    if run is not None and not run.ok:
        raise typer.Exit(1)
