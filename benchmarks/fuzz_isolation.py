"""The long run of the isolation fuzz (`tests/test_fuzz_isolation.py`): two API keys in
flight at once with hostile heads and Go-decoder bodies. CI runs a few hundred
requests; this runs as many pairs as asked and prints the test's counts line
(requests by status) and its verdict.

    .venv/bin/python -m benchmarks.fuzz_isolation --examples 5000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=5000, help="request pairs to send")
    args = parser.parse_args()
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-s",
        "-p",
        "no:cacheprovider",
        "tests/test_fuzz_isolation.py",
    ]
    env = {**os.environ, "FUZZ_EXAMPLES": str(args.examples)}
    return subprocess.run(command, cwd=ROOT, env=env, check=False).returncode


if __name__ == "__main__":
    raise SystemExit(main())
