"""`evc --help` wall time, beside a bare `python -c pass` measured in the same run.

Target: `evc --help` under 0.3 s. Heavy libraries (docker, ansible, cryptography)
must stay out of CLI start-up; the ratio to bare Python shows what EVC adds.
"""

import statistics
import sys

from _util import EVC, timed

RUNS = 15


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
    return 0 if c < 0.3 else 1


if __name__ == "__main__":
    sys.exit(main())
