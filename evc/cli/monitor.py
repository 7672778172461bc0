"""`evc monitor`: telemetry rounds in a loop, or a systemd unit that runs them."""

from __future__ import annotations

import typer

from evc import names
from evc.cli.context import workspace
from evc.cli.logs import OFFLINE_AFTER
from evc.options import TARGET_HELP


def monitor(
    interval: float = typer.Option(
        30.0, "--interval", "-i", min=0.1, help="Seconds between rounds."
    ),
    target: str = typer.Argument("all", help=TARGET_HELP),
    rounds: int = typer.Option(None, "--rounds", min=1, help="Stop after this many rounds."),
    offline_after: int = OFFLINE_AFTER,
    systemd_unit: bool = typer.Option(
        False, "--systemd-unit", help="Print a systemd unit that runs this monitor, and exit."
    ),
    json: bool = typer.Option(False, "--json", help="One JSON object per round (JSON lines)."),
    converge: bool = typer.Option(
        False,
        "--converge",
        help="After each round, `evc fleet converge` the nodes back "
        "online after being unreachable or offline, and those not running a declared model.",
    ),
    target_option: str = typer.Option(None, "--target", "-t", hidden=True),  # 0.1's spelling
) -> None:
    """Collect telemetry every INTERVAL seconds until Ctrl-C or SIGTERM (then exit 0).

    Rounds never overlap; a round that overruns skips to the next tick. A failing
    node or round is reported and the loop goes on.
    """
    import json as jsonlib

    from evc import monitor as core
    from evc.console import err, line, out, styled

    target = names.check_target(target_option or target)
    ws = workspace()
    if systemd_unit:
        typer.echo(core.systemd_unit(ws, interval, target, offline_after, converge), nl=False)
        return

    def on_round(r) -> None:
        if json:
            print(jsonlib.dumps(r.to_dict(), default=str), flush=True)
            return
        when = f"round {r.number} {r.duration_s:5.1f} s"
        if r.result is None:
            line(f"{when}  ", styled("failed", "red"), f": {r.error}")
            return
        hosts = r.result.run.hosts
        bad = {h: x.state for h, x in sorted(hosts.items()) if x.state not in ("ok", "changed")}
        text = f"{when}  {len(hosts) - len(bad)}/{len(hosts)} nodes sampled"
        text += "".join(f"  {h} {s}" for h, s in bad.items())
        text += "".join(f"  {e['node']} -> {e['to_state']}" for e in r.result.events)
        text += f"  (skipped {r.skipped_ticks} ticks)" if r.skipped_ticks else ""
        out.print(text, highlight=False)
        for n in r.converged.nodes if r.converged is not None else ():
            for x in n.repairs:
                done = "repaired" if x["ok"] else f"not repaired ({x['message']})"
                out.print(f"  {n.host}: {x['kind']}: {x['action']}: {done}", highlight=False)
        if r.error:
            line("  ", styled(r.error, "red"))

    def on_signal(name: str, again: bool) -> None:
        what = "aborting now" if again else "stopping after this round (again to abort)"
        err.print(f"{name}: {what}", highlight=False)

    if not json:
        err.print(f"monitoring {target} every {interval:g} s; Ctrl-C stops", highlight=False)
    summary = core.run(ws, interval, target, rounds=rounds, offline_after=offline_after,
                       on_round=on_round, on_signal=on_signal, converge=converge)  # fmt: skip
    if not json:
        err.print(
            f"stopped after {summary.rounds} rounds ({summary.failed_rounds} failed, "
            f"{summary.skipped_ticks} ticks skipped)",
            highlight=False,
        )
