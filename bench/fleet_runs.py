"""Fleet runs: EVC's run_playbook vs plain ``ansible-playbook`` with its defaults.

Side by side in one run, on the same 8 lab nodes and the same modules (ping, facts,
telemetry): wall time and controller CPU-seconds (this process plus its children's
rusage), interleaved, median of ROUNDS. Issue 19's target: EVC at least 2.5x faster
than the defaults (forks 5, facts gathered, no pipelining). Variants:

- ``defaults``: ``ansible-playbook`` on a copy of the playbooks without their
  ``gather_facts: false`` (so facts are gathered, as by default), forks 5, only the
  workspace's known_hosts added (``ANSIBLE_SSH_EXTRA_ARGS``);
- ``evc``: :func:`evc.ansible.run_playbook` as it is;
- ``evc+mitogen``: the same with mitogen's ``mitogen_linear`` strategy (only when
  the ``mitogen`` package is installed: EVC does not depend on it, see README).

Then the controller's part of a push-mode shard hand-over (infer_shard.yml: one
ansible-playbook run, one task, one node), less its file transfer: a one-task run
on one node, in CPU-seconds (issue 19's target: under 0.4).

Uses its own lab ("evcfleetbench", 8 nodes) and removes it at the end; or, with
``--workspace DIR``, the lab of an existing workspace (not removed).
"""

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _util import bench_lab, cpu, lab_args

ROUNDS = 5
PLAYBOOKS = ("ping.yml", "facts.yml", "telemetry.yml")


def plain_playbooks(into: Path) -> Path:
    """The bundled playbooks, facts gathered (ansible-playbook's default)."""
    from evc.resources import data_dir

    shutil.copytree(data_dir("playbooks"), into)
    for path in into.glob("*.yml"):
        text = path.read_text().replace("  gather_facts: false\n", "")
        path.write_text(text)
    return into


def mitogen_env() -> dict[str, str] | None:
    try:
        import ansible_mitogen
    except ImportError:
        return None
    strategy = Path(ansible_mitogen.__file__).parent / "plugins" / "strategy"
    return {"ANSIBLE_STRATEGY_PLUGINS": str(strategy), "ANSIBLE_STRATEGY": "mitogen_linear"}


def variants(ws, plain: Path, target: str) -> dict:
    """name -> function(playbook) that runs it on ``target`` and fails loudly."""
    import evc.ansible as evc_ansible

    base_env = evc_ansible.ansible_env

    def plain_run(playbook: str) -> None:
        env = {**os.environ, "ANSIBLE_SSH_EXTRA_ARGS": f"-o UserKnownHostsFile={ws.known_hosts}"}
        cmd = [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            str(ws.inventory),
            "-l",
            target,
            playbook,
        ]
        proc = subprocess.run(cmd, cwd=plain, env=env, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}")

    def evc_run(extra: dict[str, str]):
        def run(playbook: str) -> None:
            evc_ansible.ansible_env = lambda *a, **k: {**base_env(*a, **k), **extra}
            try:
                result = evc_ansible.run_playbook(ws, playbook, target)
            finally:
                evc_ansible.ansible_env = base_env
            if not result.ok:
                sys.exit(f"{playbook} on {target} failed: {result.to_dict()}")

        return run

    out = {"defaults": plain_run, "evc": evc_run({})}
    if (mito := mitogen_env()) is not None:
        out["evc+mitogen"] = evc_run(mito)
    return out


def measure(runs: dict, playbooks, rounds: int) -> dict:
    """(variant, playbook) -> ([wall s], [cpu s]), interleaved."""
    out = {(v, p): ([], []) for v in runs for p in playbooks}
    for _ in range(rounds):
        for playbook in playbooks:
            for name, run in runs.items():
                cpu0, start = cpu(), time.perf_counter()
                run(playbook)
                wall, used = out[(name, playbook)]
                wall.append(time.perf_counter() - start)
                used.append(cpu() - cpu0)
    return out


def report(title: str, found: dict, playbooks) -> float:
    """Print medians per playbook; return the smallest defaults/evc wall ratio."""
    print(title)
    worst = float("inf")
    for playbook in playbooks:
        base = statistics.median(found[("defaults", playbook)][0])
        for (name, pb), (wall, used) in found.items():
            if pb != playbook:
                continue
            w, c = statistics.median(wall), statistics.median(used)
            print(f"  {playbook:14} {name:12} wall {w:6.2f} s  cpu {c:5.2f} s  x{base / w:4.1f}")
        worst = min(worst, base / statistics.median(found[("evc", playbook)][0]))
    return worst


def main() -> int:
    args = lab_args(__doc__, ROUNDS)
    with (
        tempfile.TemporaryDirectory() as tmp,
        bench_lab(args.workspace, "evcfleetbench", "172.31.230.0/24", 8) as ws,
    ):
        plain = plain_playbooks(Path(tmp) / "plain")
        runs = variants(ws, plain, "lab")
        measure(runs, PLAYBOOKS, 1)  # warm: SSH masters, telemetry state on the nodes
        fleet_found = measure(runs, PLAYBOOKS, args.rounds)
        one = {k: v for k, v in variants(ws, plain, "node1").items() if k != "defaults"}
        shard_found = measure(one, ["ping.yml"], args.rounds)
    ratio = report(f"8 nodes, median of {args.rounds} (x: defaults' wall / this wall)",
                   fleet_found, PLAYBOOKS)  # fmt: skip
    print("one node, one task (the controller's part of a shard hand-over):")
    for name, (wall, used) in shard_found.items():
        w, c = statistics.median(wall), statistics.median(used)
        print(f"  {name[0]:12} wall {w:6.2f} s  cpu {c:5.2f} s (target < 0.4)")
    print(f"evc vs defaults, worst playbook: {ratio:.1f}x  target >= 2.5x: "
          f"{'PASS' if ratio >= 2.5 else 'FAIL'}")  # fmt: skip
    return 0 if ratio >= 2.5 else 1


if __name__ == "__main__":
    sys.exit(main())
