"""A warm Ansible: ``ansible-playbook`` runs forked from a process that imported it once.

Starting ``ansible-playbook`` costs the controller about 1.2 CPU-seconds before the
first task, most of it importing Ansible; a push-mode shard hand-over pays it each
time, and so does every fleet command. The server here imports Ansible once and forks
a worker per run. ansible-runner still drives every run as before (pty, events,
artifacts, cancel): its binary is a small client (:mod:`evc.ansible_warm_client`) that
hands its arguments, environment, folder and streams to the server over a Unix socket.

A worker is the run only where it would behave as a fresh start: after taking the run's
environment and folder it evaluates Ansible's settings again, and any setting other
than those Ansible reads per run (:data:`PER_RUN`) that differs from what the server
imported with (a plugin path, a configuration file, the colour) makes it exec the real
``ansible-playbook`` instead. A ``vars_prompt`` (how a secret reaches a play) is
asked and answered on the run's terminal, which the worker holds as ansible-playbook
would: the secret never passes through the server. Runs on a remote worker do not come
here. ``EVC_ANSIBLE_SERVER=0`` turns the server off.

One server per user, Python and EVC copy, in a private folder under the temporary
folder (0700, checked as the SSH control folder is); peers of another uid are refused.
The first run without a server starts it, detached, and runs the usual way; the server
leaves after :data:`IDLE_S` without a run.
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import json
import os
import select
import signal
import socket
import struct
import sys
import tempfile
import warnings
from pathlib import Path

from evc.connections import private_dir

IDLE_S = 120
# Settings that EVC's runs set per run, which Ansible reads while it runs (TASK_TIMEOUT
# also as a task's default, which :func:`_task_timeout` puts in place).
PER_RUN = frozenset(
    {"DEFAULT_FORKS", "CACHE_PLUGIN_CONNECTION", "DEFAULT_LOCAL_TMP", "TASK_TIMEOUT"}
)
LOG_MAX = 1 << 20  # the server's log is cut to nothing past this size
_CLIENT = Path(__file__).with_name("ansible_warm_client.py")


def enabled() -> bool:
    return os.environ.get("EVC_ANSIBLE_SERVER", "1") != "0"


def folder() -> Path:
    """This user's server folder for this Python and this EVC copy (its code included,
    so a changed EVC or Ansible gets a server of its own)."""
    import ansible.release

    key = "\0".join(
        [sys.executable, str(Path(__file__).resolve()), ansible.release.__version__,
         Path(__file__).read_text(), _CLIENT.read_text()]
    )  # fmt: skip
    tag = hashlib.sha256(key.encode()).hexdigest()[:12]
    return private_dir(
        Path(tempfile.gettempdir()) / f"evc-ansible-{os.getuid()}-{tag}", "EVC's Ansible runs"
    )


def binary() -> str | None:
    """The client's path, for ansible-runner's ``binary`` (None: server turned off, or
    the temporary folder is mounted noexec)."""
    if not enabled():
        return None
    where = folder()
    if os.statvfs(where).f_flag & os.ST_NOEXEC:  # a hardened /tmp: no client runs there
        return None
    playbook = _playbook()
    if playbook is None:  # ansible-runner will say it is missing
        return None
    client = where / "ansible-playbook"
    root = str(Path(__file__).resolve().parent.parent)
    server = [
        sys.executable, "-c",
        f"import sys; sys.path.insert(0, {root!r}); from evc.ansible_warm import serve; "
        f"serve({str(where)!r}, {playbook!r})",
    ]  # fmt: skip
    text = f"#!{sys.executable} -IS\n" + _CLIENT.read_text().replace(
        'SOCKET = PLAYBOOK = ""  # set in the copy evc.ansible_warm writes\nSERVER: list = []',
        f"SOCKET = {str(where / 'sock')!r}\nPLAYBOOK = {str(playbook)!r}\nSERVER = {server!r}",
    )
    try:
        if client.read_text() == text:
            return str(client)
    except OSError:
        pass
    tmp = where / f".client-{os.getpid()}"
    tmp.write_text(text)
    tmp.chmod(0o700)
    os.replace(tmp, client)
    return str(client)


def _playbook() -> str | None:
    """The ``ansible-playbook`` a run would start: this Python's own, else the PATH's
    (as :func:`evc.connections.ansible_env` orders them)."""
    import shutil

    here = str(Path(sys.executable).parent)
    return shutil.which("ansible-playbook", path=here + os.pathsep + os.environ.get("PATH", ""))


def _settings() -> dict:
    from ansible import constants as C  # noqa: N812 - Ansible's own name for it

    return {name: getattr(C, name, None) for name in C.config.get_configuration_definitions()}


# Plugins every EVC run loads (by type: loader name, plugins), as classes. Left out:
# callbacks (ansible-runner's reads the environment when it is imported) and vars
# plugins (their loader keeps instances, which a class would stand in for).
WARM = {
    "connection_loader": ("ansible.builtin.ssh", "ansible.builtin.local"),
    "shell_loader": ("ansible.builtin.sh",),
    "become_loader": ("ansible.builtin.sudo",),
    "strategy_loader": ("ansible.builtin.linear",),
    "action_loader": ("ansible.builtin.raw", "ansible.builtin.normal", "ansible.builtin.command",
                      "ansible.builtin.shell", "ansible.builtin.copy", "ansible.builtin.debug"),
    "inventory_loader": ("ansible.builtin.host_list", "ansible.builtin.script",
                         "ansible.builtin.auto", "ansible.builtin.yaml", "ansible.builtin.ini",
                         "ansible.builtin.toml"),
    "cache_loader": ("ansible.builtin.memory", "ansible.builtin.jsonfile"),
    "lookup_loader": ("ansible.builtin.file", "ansible.builtin.env"),
}  # fmt: skip


def _warm_up() -> None:
    """What every run does before its first task and keeps for the process: the plugin
    loader (the collection finder, ansible.builtin's routing table), the plugins above
    with their option definitions (parsed from their YAML docs). A run then finds the
    finder in place (it would configure the same one: COLLECTIONS_PATHS is compared)."""
    from ansible.plugins import loader

    loader.init_plugin_loader([])
    for name, plugins in WARM.items():
        for plugin in plugins:
            try:
                getattr(loader, name).get(plugin, class_only=True)
            except Exception:  # noqa: BLE001, S112 - a run loads it, or fails, itself
                continue
    # Every run's PlaybookExecutor first loads all of ansible-core's connection, shell and
    # become plugins for their option definitions (winrm, psrp, paramiko...): parsing
    # their docs in each run cost a one-host ping 0.13 of its 0.39 CPU-s.
    for name in ("connection_loader", "shell_loader", "become_loader"):
        try:
            list(getattr(loader, name).all(class_only=True))
        except Exception:  # noqa: BLE001, S112 - a run loads them, or fails, itself
            continue


# Module payloads (AnsiballZ) kept between runs. Ansible builds each module's payload
# once per run (a scan of its imports and a zip: 0.3-0.7 CPU-s for community.docker's)
# into the run's own temporary folder. A worker seeds that folder with the payloads that
# earlier runs built, each only while every file it was built from is the one Ansible
# would find first, as it was (size, mtime); a payload with a part from anywhere else
# (a playbook's library/) is not kept. The folder is the server's (private).
PAYLOADS = "payloads"


def _sources(names: dict[str, int]) -> list | None:
    """[name, path, size, mtime_ns] for each payload entry (``names``: name: size in the
    payload), path None for an empty ``__init__.py`` made up by Ansible; None when an
    entry comes from no file of Ansible's package or the collection paths."""
    import ansible
    from ansible.utils.collection_loader._collection_config import AnsibleCollectionConfig

    package = [str(Path(ansible.__file__).parent.parent)]
    collections = list(AnsibleCollectionConfig.collection_paths)
    out = []
    for name, size in names.items():
        roots = collections if name.startswith("ansible_collections/") else package
        for root in roots:
            try:
                st = os.stat(os.path.join(root, name))
            except OSError:
                continue
            out.append([name, os.path.join(root, name), st.st_size, st.st_mtime_ns])
            break
        else:
            if size or not name.endswith("__init__.py"):
                return None
            out.append([name, None, 0, 0])
    return out


def _keep_payloads(top: Path) -> None:
    """Seed this run's payload cache from the kept ones, and keep what it builds."""
    import base64
    import io
    import shutil
    import zipfile

    from ansible import constants as C  # noqa: N812
    from ansible.executor import module_common

    kept, mine = top / PAYLOADS, Path(C.DEFAULT_LOCAL_TMP, "ansiballz_cache")
    mine.mkdir(parents=True, exist_ok=True)
    for recipe in kept.glob("*.json"):  # NAME.json: what payload NAME was built from
        try:
            sources = json.loads(recipe.read_text())
            if sources == _sources({name: size for name, _, size, _ in sources}):
                part = mine / f".{recipe.stem}.part"  # whole or absent: Ansible loads it
                shutil.copyfile(recipe.with_suffix(""), part)
                part.rename(mine / recipe.stem)
        except (OSError, ValueError, TypeError):  # changed, or being written: built anew
            continue
    dump = module_common._CachedModule.dump

    def keep(cached, path: str) -> None:
        with zipfile.ZipFile(io.BytesIO(base64.b64decode(cached.zip_data))) as zf:
            sources = _sources({i.filename: i.file_size for i in zf.infolist()})
        if sources is None:
            return
        kept.mkdir(mode=0o700, exist_ok=True)
        name = kept / os.path.basename(path)
        part = name.with_name(f".{name.name}.{os.getpid()}")
        part.write_bytes(Path(path).read_bytes())
        part.rename(name)
        part.write_text(json.dumps(sources))
        part.rename(name.with_name(name.name + ".json"))

    def dump_and_keep(self, path: str) -> None:
        dump(self, path)
        try:
            keep(self, path)
        except (OSError, ValueError, zipfile.BadZipFile):  # not kept: built again next run
            pass

    module_common._CachedModule.dump = dump_and_keep


def _task_timeout(value: int) -> None:
    """A task's ``timeout`` defaults to TASK_TIMEOUT as it was when Ansible's playbook
    classes were defined (in the server): the run's value instead."""
    from ansible.playbook.base import Base

    vars(Base)["timeout"].default = value


def _log(where: Path, line: str) -> None:
    path = where / "server.log"
    try:
        if path.stat().st_size > LOG_MAX:
            path.write_text("")
    except OSError:
        pass
    with open(path, "a") as f:
        f.write(line + "\n")


def log_size() -> int:
    """Where the server's log ends now: for :func:`cpu_since`."""
    try:
        return (folder() / "server.log").stat().st_size
    except FileNotFoundError:
        return 0


def cpu_since(offset: int) -> float:
    """CPU-seconds of the runs the server ended after ``offset`` in its log (benchmarks:
    a worker is no child of the process that asked for its run)."""
    with open(folder() / "server.log") as f:
        f.seek(offset)
        ended = [line.split() for line in f if " ended " in line]
    return sum(float(words[-1]) for words in ended)


def serve(where: str, program: str) -> None:
    """The server: one at a time per folder (a lock), forking a handler per run;
    ``program``: the real ansible-playbook, which a worker becomes when it must."""
    top = Path(where)
    lock = open(top / "lock", "wb")  # noqa: SIM115 - held while the server lives
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return  # another one serves
    import ansible.cli.playbook  # noqa: F401 - the import a run would pay
    import ansible.executor.playbook_executor  # noqa: F401

    _warm_up()
    known = _settings()
    from ansible.playbook.base import Base

    timeout = getattr(vars(Base).get("timeout"), "default", None)
    per_run = PER_RUN if timeout == known["TASK_TIMEOUT"] else PER_RUN - {"TASK_TIMEOUT"}
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # handlers reaped by the kernel
    path = top / "sock"
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(64)
    listener.settimeout(IDLE_S)
    _log(top, f"{os.getpid()} serving")
    while True:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            break
        uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
        if uid != os.getuid():
            conn.close()
            continue
        if os.fork() == 0:
            listener.close()
            lock.close()
            conn.settimeout(None)
            _handle(conn, program, known, per_run, top)  # never returns
        conn.close()
    path.unlink(missing_ok=True)
    _log(top, f"{os.getpid()} idle for {IDLE_S} s: gone")


def _handle(conn: socket.socket, program: str, known: dict, per_run: frozenset, top: Path) -> None:
    """One run: fork its worker, kill it if the client goes, send its wait status."""
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        msg, fds, _, _ = socket.recv_fds(conn, 4, 3)
        (size,) = struct.unpack("!I", msg)
        data = b""
        while len(data) < size:
            chunk = conn.recv(size - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        call = json.loads(data)
        run = os.path.basename(call["env"].get("AWX_ISOLATED_DATA_DIR", "-"))  # its folder
        worker = os.fork()
        if worker == 0:
            _work(call, run, fds, conn, program, known, per_run, top)  # never returns
        for fd in fds:
            os.close(fd)
        pidfd = os.pidfd_open(worker)
        while True:
            ready, _, _ = select.select([pidfd, conn], [], [])
            if pidfd in ready:
                break
            if not conn.recv(1):  # the client is gone (ansible-runner killed it)
                try:
                    os.killpg(worker, signal.SIGKILL)
                except ProcessLookupError:  # not its own group yet
                    os.kill(worker, signal.SIGKILL)
                os.waitpid(worker, 0)
                os._exit(0)
        _, status = os.waitpid(worker, 0)
        used = os.times()  # this handler's and its worker's (with what the worker waited for)
        cpu = used.user + used.system + used.children_user + used.children_system
        _log(top, f"{worker} {run} ended {status} {cpu:.3f}")  # before the client ends
        conn.sendall(struct.pack("!i", status))
        code = 0
    finally:
        os._exit(code)


def _work(
    call: dict,
    run: str,
    fds: list[int],
    conn: socket.socket,
    program: str,
    known: dict,
    per_run: frozenset,
    top: Path,
) -> None:
    """The run, as ``ansible-playbook ARGV`` would do it, or that program itself."""
    code = 1
    try:
        os.setsid()  # a group of its own: the handler kills it whole
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        conn.sendall(struct.pack("!i", os.getpid()))
        conn.close()
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.chdir(call["cwd"])
        os.environ.clear()
        os.environ.update(call["env"])
        tempfile.tempdir = None
        atexit._clear()  # the server's own (its Ansible temporary folder)
        from ansible import constants as C  # noqa: N812
        from ansible.config.manager import find_ini_config_file

        same = find_ini_config_file() == C.config._config_file
        for name in C.config.get_configuration_definitions():
            C.set_constant(name, C.config.get_config_value(name, variables=vars(C)))
        now = _settings()
        changed = sorted(k for k in now if k not in per_run and now[k] != known.get(k))
        if not same or changed:
            _log(top, f"{os.getpid()} {run} cold: {changed or 'another configuration file'}")
            os.execv(program, [program, *call["argv"]])
        _log(top, f"{os.getpid()} {run} warm")
        for stream in (sys.stdout, sys.stderr):  # as they would be on the run's terminal
            stream.reconfigure(line_buffering=stream.isatty())
        if "TASK_TIMEOUT" in per_run:
            _task_timeout(C.TASK_TIMEOUT)
        _keep_payloads(top)
        sys.argv = [program, *call["argv"]]
        # The server configured the collection finder already (_warm_up).
        warnings.filterwarnings("ignore", "AnsibleCollectionFinder has already been configured")
        from ansible.cli.playbook import PlaybookCLI

        try:
            PlaybookCLI.cli_executor([program, *call["argv"]])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001, S110 - the run's terminal may be gone
                pass
        os._exit(code & 0xFF)
