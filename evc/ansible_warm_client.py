"""`ansible-playbook` for ansible-runner, run by EVC's warm Ansible server when it answers.

Standard library only: it runs as ``python -I -S`` (no site, no EVC import), so it costs
a few milliseconds, not the second that importing Ansible does. :mod:`evc.ansible_warm`
writes it into the server's private folder with its settings on the first lines
(``SOCKET``, ``PLAYBOOK``, ``SERVER``) and gives its path to ansible-runner as the
binary. It sends its arguments, environment, working folder and standard streams
(SCM_RIGHTS) to the server, forwards the signals that ansible-runner sends it, and
exits as the run did. When no server answers it starts one (detached, for the next run)
and becomes the real ``ansible-playbook``: a run never depends on the server.
"""

import json
import os
import signal
import socket
import struct
import sys

SOCKET = PLAYBOOK = ""  # set in the copy evc.ansible_warm writes
SERVER: list = []
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCONT)


def _start_server() -> None:
    """The server, detached from this run: its own session, no stream of ours (the pty
    stays ansible-runner's alone, or the run would not end)."""
    if os.fork() != 0:
        os.wait()
        return
    try:
        os.setsid()
        if os.fork() == 0:
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.closerange(3, 1 << 16)
            os.chdir("/")
            os.execv(SERVER[0], SERVER)
    finally:
        os._exit(0)


def _exit_as(status: int) -> None:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)


def _recv(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def main() -> None:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(SOCKET)
    except OSError:
        conn.close()
        _start_server()
        os.execv(PLAYBOOK, [PLAYBOOK, *sys.argv[1:]])
    pid, pending = None, []

    def forward(sig, _frame):
        if pid is None:
            pending.append(sig)
        else:
            os.kill(pid, sig)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    call = json.dumps({"argv": sys.argv[1:], "env": dict(os.environ), "cwd": os.getcwd()})
    try:
        socket.send_fds(conn, [struct.pack("!I", len(call))], [0, 1, 2])
        conn.sendall(call.encode())
        got = _recv(conn, 4)
    except OSError:
        got = b""
    if len(got) < 4:  # the server went away before it forked: run here
        os.execv(PLAYBOOK, [PLAYBOOK, *sys.argv[1:]])
    (pid,) = struct.unpack("!i", got)
    for sig in pending:
        os.kill(pid, sig)
    got = _recv(conn, 4)
    _exit_as(struct.unpack("!i", got)[0] if len(got) == 4 else 1 << 8)


if __name__ == "__main__":
    main()
