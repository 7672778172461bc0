"""What starting `evc` costs, beside a bare `python -c pass`, in one run.

- `evc --help` wall time. Target: under 0.3 s. Heavy libraries (docker, ansible,
  cryptography) must stay out of CLI start-up.
- Commands as they start (each imports its own command module alone, see
  ``evc.cli.LAZY``) beside the same commands started with every command module
  imported first, as every `evc` call did before: CPU-seconds (user + system of the
  child), median of RUNS, interleaved.
"""

import os
import resource
import statistics
import subprocess
import sys
import tempfile

from _util import EVC, timed

RUNS = 15
COMMANDS = (["--version"], ["device", "list", "--json"], ["token", "list", "--json"])
EAGER = (
    "import importlib, runpy, sys\n"
    "from evc.cli import LAZY\n"
    "for name in LAZY:\n"
    "    importlib.import_module(f'evc.cli.{name}')\n"
    "sys.argv = ['evc', *sys.argv[1:]]\n"
    "runpy.run_module('evc', run_name='__main__')\n"
)


def child_cpu(cmd: list[str], env: dict) -> float:
    """CPU-seconds of one run of ``cmd`` (which must succeed)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, **env})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    timed(EVC + ["--help"])  # warm the page cache and bytecode
    bare, cli = [], []
    for _ in range(RUNS):  # interleaved, so machine noise hits both alike
        bare.append(timed([sys.executable, "-c", "pass"]))
        cli.append(timed(EVC + ["--help"]))
    b, c = statistics.median(bare), statistics.median(cli)
    print(f"python -c pass  median {b * 1000:6.1f} ms  (min {min(bare) * 1000:.1f})")
    print(f"evc --help      median {c * 1000:6.1f} ms  (min {min(cli) * 1000:.1f})")
    print(f"ratio evc/python {c / b:.2f}x; evc adds {(c - b) * 1000:.0f} ms")
    print(f"target < 300 ms: {'PASS' if c < 0.3 else 'FAIL'}")

    with tempfile.TemporaryDirectory() as home:
        env = {"EVC_HOME": home}
        subprocess.run([*EVC, "init", home], check=True, capture_output=True)
        print(f"\nCPU-s per start, median of {RUNS}: its own command module vs all of them")
        for args in COMMANDS:
            own, eager = [], []
            for _ in range(RUNS):
                own.append(child_cpu([*EVC, *args], env))
                eager.append(child_cpu([sys.executable, "-c", EAGER, *args], env))
            o, e = statistics.median(own), statistics.median(eager)
            print(f"evc {' '.join(args):22s} {o:5.2f} vs {e:5.2f}  ratio {o / e:.2f}")
    return 0 if c < 0.3 else 1


if __name__ == "__main__":
    sys.exit(main())
