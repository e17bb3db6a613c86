"""Benchmark: how long `sparsealign data inspect ORG/NAME` takes to fail when the hub cannot be reached and the
dataset is not cached, against the baseline of handing the id straight to `datasets.load_dataset` (what the reader
did before: ~24 s of retries and ~10 lines of noise with no network).

    .venv/bin/python benchmarks/hub_offline.py [--id Anthropic/hh-rlhf] [--repeats 3] [--env-offline]

Each run is a fresh child process with an empty HF_HOME (nothing cached), so import time counts, as it does for a
user.  Without --env-offline the machine's own network decides (no network: the hub host does not answer); with
it, HF_HUB_OFFLINE=1 is set.  Prints the fastest wall time of each side and the ratio.  Goal: ours <= 2 s.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

OURS = "import sys; from sparsealign.cli import main; sys.exit(main(['data', 'inspect', sys.argv[1]]))"
BASELINE = "import sys, datasets; datasets.load_dataset(sys.argv[1])"


def run(code: str, hub_id: str, env_offline: bool) -> tuple[float, int, int]:
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "HF_HOME": home}
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
            env.pop(var, None)
        if env_offline:
            env["HF_HUB_OFFLINE"] = "1"
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", code, hub_id], capture_output=True, text=True, env=env,
                              timeout=600)
        lines = len([ln for ln in proc.stderr.splitlines() if ln.strip()])
        return time.perf_counter() - start, proc.returncode, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--id", default="Anthropic/hh-rlhf")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--env-offline", action="store_true", help="set HF_HUB_OFFLINE=1")
    args = parser.parse_args()
    best: dict[str, tuple[float, int, int]] = {}
    for _ in range(args.repeats):
        for name, code in (("ours", OURS), ("datasets.load_dataset", BASELINE)):
            got = run(code, args.id, args.env_offline)
            if name not in best or got[0] < best[name][0]:
                best[name] = got
    for name, (seconds, rc, lines) in best.items():
        print(f"{name:24s} {seconds:6.2f} s  exit {rc}  {lines} stderr lines")
    ratio = best["datasets.load_dataset"][0] / best["ours"][0]
    print(f"ours is {ratio:.1f}x faster to fail; goal ours <= 2 s: {'met' if best['ours'][0] <= 2 else 'NOT met'}")


if __name__ == "__main__":
    main()
