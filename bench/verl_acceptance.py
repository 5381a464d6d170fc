"""Acceptance: verl's own SandboxFusion test file, unmodified, against execbox (run by hand).

Exports ``tests/utils/reward_score/reward_score/test_sandbox_fusion_on_cpu.py`` and the package it
tests, ``verl/utils/reward_score/sandbox_fusion/``, from the SAME commit of a verl checkout (the
test file tracks that package: e.g. its continuous-score unit test needs the package of its own
commit) into a temporary directory, and runs it with pytest and
``SANDBOX_FUSION_URL=<execbox>/run_code``. Only that subpackage is importable there (``verl`` and
its parents are namespace packages), so torch and the rest of verl are never imported.

Pass means: every test passed, none skipped, none failed. Without ``SANDBOX_FUSION_URL`` the file
skips its integration tests; this script always sets it, and counts a skip as a failure.

    python bench/verl_acceptance.py                      # starts execbox on 127.0.0.1 (defaults)
    python bench/verl_acceptance.py --url http://127.0.0.1:8000
    python bench/verl_acceptance.py --verl /path/to/verl --commit a5aef7cd -s batch_workers=16

Needs a verl git checkout (CI cannot fetch GitHub, so this is not part of ``make test``). The
file's ``concurrency_all_timeout`` test sends 100 CPU-bound 1 GiB programs, 32 at a time, each
timing out at 10 s, and needs every verdict within its 30 s HTTP timeout: the service needs about
a dozen batch workers (``EXECBOX_BATCH_WORKERS``, default 16) and the memory for them.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests.support
from tests.support.server import local_server

DEFAULT_VERL = Path("/work/.mirror/verl-project+verl/repo")
TEST_FILE = "tests/utils/reward_score/reward_score/test_sandbox_fusion_on_cpu.py"
PACKAGE = "verl/utils/reward_score/sandbox_fusion"


def export(verl: Path, commit: str, dest: Path) -> str:
    """Write the test file and the package, both from ``commit``, under ``dest``; returns the full commit id."""
    full = subprocess.run(
        ["git", "-C", str(verl), "rev-parse", "--verify", f"{commit}^{{commit}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    archive = subprocess.run(
        ["git", "-C", str(verl), "archive", full, TEST_FILE, PACKAGE], capture_output=True, check=True
    )
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(dest, filter="data")
    for needed in (TEST_FILE, f"{PACKAGE}/__init__.py", f"{PACKAGE}/utils.py"):
        if not (dest / needed).is_file():
            raise SystemExit(f"{needed} is not in verl@{full[:10]}")
    # pytest reads no configuration but this empty one (not execbox's pyproject.toml).
    (dest / "pytest.ini").write_text("[pytest]\n")
    return full


@contextmanager
def execbox(url: str | None, settings: dict[str, str], log_dir: Path) -> Iterator[str]:
    if url:
        yield url.rstrip("/")
        return
    with local_server(log_dir / "server.log", min_ready="0", **settings) as server:
        print(f"execbox at {server.url} (log {log_dir / 'server.log'})", flush=True)
        yield server.url


def junit_counts(report: Path) -> dict[str, int]:
    root = ET.parse(report).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for suite in suites:
        for key in counts:
            counts[key] += int(suite.get(key, "0"))
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verl", type=Path, default=DEFAULT_VERL, help="a verl git checkout (or bare repository)")
    parser.add_argument("--commit", default="HEAD", help="the verl commit to take the test file and package from")
    parser.add_argument("--url", help="a running execbox serving /run_code without a key (default: start one)")
    parser.add_argument(
        "-s",
        "--setting",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="EXECBOX_ setting of the started server",
    )
    args = parser.parse_args()
    settings = dict(s.split("=", 1) for s in args.setting)

    with tempfile.TemporaryDirectory(prefix="verl-acceptance-") as tmp:
        root = Path(tmp)
        commit = export(args.verl, args.commit, root)
        print(f"verl@{commit}: {TEST_FILE} and {PACKAGE}/ exported unmodified", flush=True)
        with execbox(args.url, settings, root) as url:
            env = {**os.environ, "SANDBOX_FUSION_URL": f"{url}/run_code", "PYTHONPATH": str(root)}
            report = root / "report.xml"
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pytest",
                    TEST_FILE,
                    "-p",
                    "no:cacheprovider",
                    "-rA",
                    "--tb=short",
                    f"--junitxml={report}",
                ],
                cwd=root,
                env=env,
            )
        counts = junit_counts(report) if report.exists() else None
    if counts is None:
        raise SystemExit(f"pytest wrote no report (exit code {done.returncode})")
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    print(
        f"\nverl acceptance: {passed}/{counts['tests']} passed, {counts['failures']} failed, "
        f"{counts['errors']} errors, {counts['skipped']} skipped"
    )
    ok = done.returncode == 0 and counts["tests"] > 0 and passed == counts["tests"]
    print("PASS" if ok else "FAIL (every test must pass and none be skipped)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
