"""`evc serve`: the HTTP API and web console (FastAPI is imported only when it runs)."""

from __future__ import annotations

from pathlib import Path

import typer

from evc.cli.context import workspace


def _bind(value: str) -> tuple[str, int]:
    from evc.errors import UsageError

    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--bind {value!r}: expected HOST:PORT, e.g. 127.0.0.1:8080.")
    return host, int(port)


def _size(value: str) -> int:
    from evc.errors import UsageError

    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    number, unit = (value[:-1], value[-1].lower()) if value[-1:].isalpha() else (value, "")
    if not number.isdigit() or unit not in ("", *units) or int(number) == 0:
        raise UsageError(f"--max-upload {value!r}: expected a size such as 500m or 2g.")
    return int(number) * units.get(unit, 1)


def serve(
    bind: str = typer.Option("127.0.0.1:8080", "--bind", help="HOST:PORT to listen on."),
    tls: bool = typer.Option(
        False, "--tls", help="HTTPS with a certificate from the workspace CA (.evc/registry)."
    ),
    tls_host: list[str] = typer.Option(
        None, "--tls-host", help="Another name or address for the certificate (repeatable)."
    ),
    allow_anonymous_read: bool = typer.Option(
        False, "--allow-anonymous-read", help="Let requests without a token read (viewer)."
    ),
    data_root: list[Path] = typer.Option(
        None,
        "--data-root",
        help="A folder whose files and subfolders jobs may read as --data (repeatable; "
        "default: none, only uploads).",
    ),
    max_upload: str = typer.Option("2g", "--max-upload", help="Largest upload of job data."),
    run_configs: Path = typer.Option(
        None, "--run-configs", help="Folder of the run-configs it offers (default: ./run_cfg)."
    ),
    systemd_unit: bool = typer.Option(
        False, "--systemd-unit", help="Print a systemd unit that runs this server, and exit."
    ),
) -> None:
    """Serve the HTTP API (/api, OpenAPI at /api/openapi.json) and the web console.

    Callers send a token from `evc token create` (Authorization: Bearer TOKEN). Jobs,
    deploys and run-configs run in the server and are recorded as they go; Ctrl-C or
    SIGTERM stops running jobs as Ctrl-C of `evc infer run` does (resumable).
    """
    from evc.errors import UsageError

    host, port = _bind(bind)
    ws = workspace()
    roots = tuple(Path(r).resolve() for r in data_root or [])
    for root in roots:
        if not root.is_dir():
            raise UsageError(f"--data-root {root}: no such folder.")
    if systemd_unit:
        from evc.api.server import systemd_unit as unit

        args = ["--bind", bind, "--max-upload", max_upload]
        args += ["--tls"] * tls + ["--allow-anonymous-read"] * allow_anonymous_read
        args += [w for h in tls_host or [] for w in ("--tls-host", h)]
        args += [w for r in roots for w in ("--data-root", str(r))]
        if run_configs:
            args += ["--run-configs", str(run_configs.resolve())]
        typer.echo(unit(ws, args), nl=False)
        return
    from evc.api.app import ServeSettings
    from evc.api.server import run

    settings = ServeSettings(
        host=host, port=port, tls=tls, allow_anonymous_read=allow_anonymous_read,
        data_roots=roots, max_upload=_size(max_upload),
        run_configs=(run_configs or ws.root / "run_cfg").resolve(),
    )  # fmt: skip
    run(ws, settings, tuple(tls_host or ()))
