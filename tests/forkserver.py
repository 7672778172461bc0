"""Run `python -m evc ARGS` without paying Python's start-up and EVC's imports each time.

A test run starts `evc` hundreds of times; each start imported pydantic, typer, rich,
sqlite-utils and EVC's library again (about 0.45 CPU-s of the 0.5 a `device list` costs,
measured on the test machine), a seventh of the whole suite's CPU. The server below is a
fresh interpreter (started once per pytest process, not forked from pytest, so no
monkeypatch of a test reaches it) that imports the library once and forks a child per
call; the child gets the call's argv, environment, working folder and standard streams,
then runs ``evc/__main__.py`` as ``python -m evc`` does. What it does not share with a
real start: EVC's terminal consoles (``evc.console`` reads the environment when it is
imported, so neither it nor the CLI modules that import it at their top are imported
before the fork) and anything Python reads from the environment at start-up only
(PYTHON* variables, which the tests do not set per call).

Protocol, one connection per call: the client sends one JSON line (argv, env, cwd)
with the child's stdin, stdout and stderr as file descriptors (SCM_RIGHTS); the server's
handler forks the child and answers its pid, then its wait status, one line each.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

# The library: every module the CLI's commands import, none that imports evc.console.
PRELOAD = ("evc.cli", "evc.cli.context", "evc.cli.options", "evc.db", "evc.config",
           "evc.devices", "evc.fleet", "evc.certs", "evc.registry", "evc.engine",
           "evc.ansible", "evc.inventory", "evc.targets", "evc.logs", "evc.monitor",
           "evc.model.build", "evc.model.deploy", "evc.model.publish", "evc.model.catalogue",
           "evc.infer.jobs", "evc.infer.runner", "evc.infer.pull", "evc.infer.data",
           "evc.lab", "evc.lab.fleet", "evc.queue.server", "evc.queue.streams",
           "evc.pull_credentials", "evc.run.execute", "evc.run.config", "evc.grafana.builder",
           "evc.grafana.push", "evc.grafana.server", "evc.api.tokens", "docker", "redis",
           "rich.console", "rich.table", "typer.rich_utils", "yaml")  # fmt: skip


def _serve(path: str) -> None:
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    assert "evc.console" not in sys.modules, "evc.console must be imported after the fork"
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getppid()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    listener.settimeout(1.0)
    print("ready", flush=True)
    while os.getppid() == parent:  # pytest gone: so is this server
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            conn = None
        while True:  # reap the handlers that are done
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break
        if conn is None:
            continue
        if os.fork() == 0:
            listener.close()
            conn.settimeout(None)
            _handle(conn)  # never returns
        conn.close()


def _handle(conn: socket.socket) -> None:
    code = 1
    try:
        msg, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
        call = json.loads(msg)
        child = os.fork()
        if child == 0:
            conn.close()
            _child(call, fds)  # never returns
        for fd in fds:
            os.close(fd)
        conn.sendall(f"{child}\n".encode())
        _, status = os.waitpid(child, 0)
        conn.sendall(f"{status}\n".encode())
        code = 0
    finally:
        os._exit(code)


def _child(call: dict, fds: list[int]) -> None:
    import atexit
    import random
    import runpy
    import traceback

    code = 1
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.chdir(call["cwd"])
        sys.path[0] = call["cwd"]  # as `python -m` puts it first
        os.environ.clear()
        os.environ.update(call["env"])
        tempfile.tempdir = None
        random.seed()
        sys.argv = ["evc", *call["argv"]]
        try:
            runpy.run_module("evc", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exc:
            if exc.code is None:
                code = 0
            elif isinstance(exc.code, int):
                code = exc.code
            else:
                print(exc.code, file=sys.stderr)
        except KeyboardInterrupt:
            traceback.print_exc()
            code = 130
        except BaseException:
            traceback.print_exc()
        threading._shutdown()  # as at interpreter exit: wait for non-daemon threads
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code & 0xFF)


class Server:
    """One server per pytest process, started on first use."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="evc-forkserver-")
        self.path = str(Path(self.dir) / "sock")
        root = Path(__file__).resolve().parent.parent
        self.proc = subprocess.Popen(
            [sys.executable, "-c", f"import tests.forkserver as f; f._serve({self.path!r})"],
            cwd=root, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(
                [str(root), *filter(None, [os.environ.get("PYTHONPATH")])])},
        )  # fmt: skip
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the evc fork server did not start (exit {self.proc.wait()})")

    def run(self, argv: list[str], *, env: dict, cwd, timeout, input):
        """As ``subprocess.run(capture_output=True, text=True)`` of ``python -m evc ARGV``."""
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
                tempfile.TemporaryFile() as inp:  # fmt: skip
            if input is not None:
                inp.write(input.encode())
                inp.seek(0)
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                conn.connect(self.path)
                msg = json.dumps({"argv": argv, "env": env, "cwd": str(cwd or os.getcwd())})
                socket.send_fds(conn, [msg.encode()], [inp.fileno(), out.fileno(), err.fileno()])
                reader = conn.makefile("r")
                pid = int(reader.readline())
                conn.settimeout(timeout)
                try:
                    line = reader.readline()
                except TimeoutError:
                    os.kill(pid, signal.SIGKILL)
                    raise subprocess.TimeoutExpired(["evc", *argv], timeout) from None
            finally:
                conn.close()
            status = int(line)
            code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            out.seek(0)
            err.seek(0)
            return subprocess.CompletedProcess(
                [sys.executable, "-m", "evc", *argv], code, _text(out.read()), _text(err.read())
            )

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        Path(self.path).unlink(missing_ok=True)
        os.rmdir(self.dir)


def _text(data: bytes) -> str:
    """As ``subprocess.run(text=True)`` decodes: the locale's encoding, universal newlines."""
    return data.decode().replace("\r\n", "\n").replace("\r", "\n")


_server: Server | None = None
_lock = threading.Lock()


def server() -> Server:
    global _server
    with _lock:
        if _server is None:
            import atexit

            _server = Server()
            atexit.register(_server.close)
        return _server
