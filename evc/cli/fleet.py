"""`evc fleet`: the declared state of the nodes, the drift from it, and its repair."""

from __future__ import annotations

import typer

from evc.cli.context import workspace
from evc.cli.options import JSON, command
from evc.cli.progress import progress
from evc.fleet import ConvergeOptions, StatusOptions

app = typer.Typer(
    help="Desired state: drift of the nodes from what the database says, and its repair.",
    no_args_is_help=True,
)


def _report(result, json: bool, title: str) -> None:
    from evc.console import print_json, print_table, styled

    if json:
        print_json(result.to_dict())
        raise typer.Exit(result.exit_code)
    rows = []
    for n in result.nodes:
        items = n.drift or [None]
        done = {(r["kind"], r["model"]): r for r in n.repairs}
        for d in items:
            r = done.get((d.kind, d.model)) if d else None
            repair = "" if r is None else (
                ("would " if not r["done"] and r["ok"] else "") + r["action"]
                + ("" if r["ok"] else f": not repaired ({r['message']})")
            )  # fmt: skip
            state = styled(n.state, "green" if n.ok else "red")
            rows.append([n.host, state, d.kind if d else "-", d.message if d else "",
                         repair or (d.fix if d else "")])  # fmt: skip
    print_table(title, ["host", "state", "drift", "message", "fix"], rows)
    raise typer.Exit(result.exit_code)


@command(app, StatusOptions)
def status(options: StatusOptions, json: bool = JSON) -> None:
    """Compare each node with what the database declares (CA, credential, models by digest);
    list the drift per node."""
    from evc import fleet

    result = fleet.status(workspace(), options, progress(json))
    _report(result, json, f"fleet status ({result.duration_s} s)")


@command(app, ConvergeOptions)
def converge(options: ConvergeOptions, json: bool = JSON) -> None:
    """Repair the drift `evc fleet status` finds (cert push, deploy by digest, undeploy of
    undeclared EVC containers); a second run changes nothing."""
    from evc import fleet

    result = fleet.converge(workspace(), options, progress(json))
    what = "dry run" if result.dry_run else ("changed" if result.changed else "nothing to change")
    _report(result, json, f"fleet converge: {what} ({result.duration_s} s)")
