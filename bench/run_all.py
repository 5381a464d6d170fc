"""Run every benchmark in turn (`make bench`)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

HERE = Path(__file__).parent
BENCHES = ["bench_core.py", "bench_batch.py", "bench_load.py"]

if __name__ == "__main__":
    only = sys.argv[1:]
    for name in BENCHES:
        if not only or any(o in name for o in only):
            runpy.run_path(str(HERE / name), run_name="__main__")
