"""HumanEval+ / MBPP+ against the real service, and against EvalPlus's own evaluator.

- Canonical solutions score 1.0 on base and plus; a solution that returns None scores 0.
- Plausible-but-wrong solutions (pass the base inputs, fail the extra ones: a wrong answer, an
  exception, a timeout) score exactly as ``evalplus.evaluate`` (the PyPI package, dev extra) scores
  them: the same statuses, the same failing inputs, the same summary lines. EvalPlus runs them on
  the host, unsandboxed, so only the samples written here go there.
- HumanEval/32, where EvalPlus 0.3.1 fails even its own canonical solution (README).
- The HTML report rendered by headless Chromium shows the numbers.

The full datasets (164 and 378 tasks, all inputs) run in bench/evalplus.py; here a subset of
cheap tasks keeps CI short.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from execbox import Client
from execbox._values import MAX_VALUE_BYTES
from execbox.evals import Dataset, PlusDataset, compute_groundtruth, evaluate_plus, load_evalplus
from execbox.evals.groundtruth import GroundTruthError
from tests.support.browser import DevTools, headless_chromium

EVALPLUS_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "evalplus"
RELEASES = {
    Dataset.HUMANEVAL: EVALPLUS_DIR / Dataset.HUMANEVAL.release_file,
    Dataset.MBPP: EVALPLUS_DIR / Dataset.MBPP.release_file,
}

# Cheap tasks for CI (the heavy ones, up to ~20 s of canonical time, run in bench/evalplus.py),
# with every special case among them: atol (HumanEval/2, /4, Mbpp/82...), the root oracle (/32),
# set equality (Mbpp/2, /7), not-None (Mbpp/737, /787, /794), alternative answers (Mbpp/558, /581),
# typed inputs (tuples: Mbpp/2, 63, 75, 106, 120, 259; complex: 124, 252; dict: 722) and an
# empty plus set (Mbpp/793).
CANONICAL = {
    Dataset.HUMANEVAL: [0, 2, 4, 7, 12, 23, 28, 32, 35, 44, 52, 53, 61, 73, 88, 101, 120, 142, 150, 162],
    Dataset.MBPP: [2, 3, 7, 11, 14, 63, 75, 82, 106, 120, 124, 252, 259, 558, 581, 722, 737, 787, 793, 794],
}

# Plausible but wrong: each passes its task's base inputs and fails an extra input, in the three
# ways the report tells apart.
PLUS_ONLY_BUGS = {
    "HumanEval/13": (  # timeout: never returns for numbers over 1e8, the first of them is plus input 102
        # (987654321, 123456789). A hang, not a slow loop: which input first outlasts its limit must
        # not depend on how busy the machine is, or execbox and EvalPlus name different inputs.
        "def greatest_common_divisor(a: int, b: int) -> int:\n"
        "    while max(a, b) > 10**8:\n        pass\n"
        "    while b:\n        a, b = b, a % b\n    return a\n"
    ),
    "HumanEval/35": (  # wrong for all-negative lists
        "def max_element(l: list):\n    m = 0\n    for x in l:\n        if x > m:\n            m = x\n    return m\n"
    ),
    "HumanEval/52": "def below_threshold(l: list, t: int):\n    return max(l) < t\n",  # ValueError on []
    "HumanEval/53": "def add(x: int, y: int):\n    return abs(x) + abs(y)\n",
    "HumanEval/2": None,  # atol
    "Mbpp/3": (  # small factors only: 7921 = 89 * 89 passes as prime
        "def is_not_prime(n):\n    return n == 1 or any(n % p == 0 for p in (2, 3, 5, 7)) and n not in (2, 3, 5, 7)\n"
    ),
    "Mbpp/11": (  # ValueError when the character is absent
        "def remove_Occ(s, ch):\n    i, j = s.index(ch), s.rindex(ch)\n"
        "    return s[:i] + s[i + 1:j] + s[j + 1:] if i != j else s[:i] + s[i + 1:]\n"
    ),
    "Mbpp/14": "def find_Volume(l, b, h):\n    return (l * b * h) // 2\n",  # floors float volumes
    "Mbpp/2": "def similar_elements(a, b):\n    return [x for x in b if x in a]\n",  # right as a set
    "Mbpp/581": None,
    "Mbpp/787": None,
}


def releases() -> dict[Dataset, Path]:
    missing = [str(p) for p in RELEASES.values() if not p.is_file()]
    if missing:
        pytest.fail(f"the EvalPlus release files belong in {EVALPLUS_DIR}: missing {missing}")
    return RELEASES


def subset_file(dataset: Dataset, task_ids: list[str], path: Path) -> Path:
    """A release file holding only ``task_ids`` (records byte-for-byte as released)."""
    with gzip.open(releases()[dataset], "rt", encoding="utf-8") as fh:
        lines = [line for line in fh if json.loads(line)["task_id"] in task_ids]
    path.write_text("".join(lines), encoding="utf-8")
    return path


def none_solution(entry_point: str) -> str:
    return f"def {entry_point}(*args):\n    return None\n"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "cache"
    monkeypatch.setenv("EXECBOX_CACHE_DIR", str(directory))
    return directory


@pytest.mark.parametrize("dataset", [Dataset.HUMANEVAL, Dataset.MBPP])
def test_canonical_solutions_score_one_and_none_returning_ones_zero(
    client: Client, dataset: Dataset, tmp_path: Path, cache: Path
) -> None:
    prefix = "HumanEval/" if dataset is Dataset.HUMANEVAL else "Mbpp/"
    ids = [f"{prefix}{n}" for n in CANONICAL[dataset]]
    data = load_evalplus(dataset, str(subset_file(dataset, ids, tmp_path / "subset.jsonl")))
    assert list(data.tasks) == ids
    truth = compute_groundtruth(client, data, directory=cache)
    canonical = [{"task_id": t, "solution": task.reference} for t, task in data.tasks.items()]
    report = evaluate_plus(client, data, canonical, groundtruth=truth)
    failing = [(s.task_id, s.base.failure, s.plus and s.plus.failure) for s in report.samples if not s.plus_passed]
    assert failing == []
    assert report.base_pass_at_k == {"pass@1": 1.0} and report.plus_pass_at_k == {"pass@1": 1.0}
    wrong = [{"task_id": t, "solution": none_solution(task.entry_point)} for t, task in data.tasks.items()]
    report = evaluate_plus(client, data, wrong, groundtruth=truth)
    assert report.base_pass_at_k == {"pass@1": 0.0} and report.plus_pass_at_k == {"pass@1": 0.0}
    # Read back from the cache for the same file: nothing is collected twice.
    assert compute_groundtruth(client, data, directory=cache).cached


def agreement_samples(data: PlusDataset) -> list[dict[str, Any]]:
    samples = []
    for task_id, task in data.tasks.items():
        samples.append({"task_id": task_id, "solution": task.reference})
        if PLUS_ONLY_BUGS[task_id] is not None:
            samples.append({"task_id": task_id, "solution": PLUS_ONLY_BUGS[task_id]})
        samples.append({"task_id": task_id, "solution": none_solution(task.entry_point)})
    return samples


@contextmanager
def evalplus_run(dataset: Dataset, data_file: Path, samples: Path, home: Path) -> Iterator[subprocess.Popen[str]]:
    """``python -m evalplus.evaluate`` on ``samples`` against ``data_file`` (EvalPlus's override
    variable), its cache in ``home``; started at once, so it runs while execbox does."""
    env = {
        **os.environ,
        "XDG_CACHE_HOME": str(home),
        "HUMANEVAL_OVERRIDE_PATH" if dataset is Dataset.HUMANEVAL else "MBPP_OVERRIDE_PATH": str(data_file),
        "TERM": "dumb",
    }
    command = [sys.executable, "-m", "evalplus.evaluate", "--dataset", dataset.value, "--samples", str(samples)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def summary_lines(stdout: str) -> list[str]:
    """EvalPlus's summary lines without termcolor's escapes (it colours only on a terminal anyway)."""
    lines = [
        line.replace("\x1b[31m", "").replace("\x1b[32m", "").replace("\x1b[0m", "") for line in stdout.splitlines()
    ]
    return [line for line in lines if line.startswith(("humaneval", "mbpp", "pass@"))]


@pytest.mark.parametrize("dataset", [Dataset.HUMANEVAL, Dataset.MBPP])
def test_plausible_but_wrong_samples_score_as_evalplus_scores_them(
    url: str, dataset: Dataset, tmp_path: Path, cache: Path
) -> None:
    ids = [t for t in PLUS_ONLY_BUGS if t.startswith("HumanEval/" if dataset is Dataset.HUMANEVAL else "Mbpp/")]
    data_file = subset_file(dataset, ids, tmp_path / "subset.jsonl")
    data = load_evalplus(dataset, str(data_file))
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps(s) + "\n" for s in agreement_samples(data)))
    ours_dir = tmp_path / "ours"
    ours_dir.mkdir()
    ours_samples = ours_dir / "samples.jsonl"
    shutil.copy(samples, ours_samples)
    exe = os.path.join(os.path.dirname(sys.executable), "execbox")
    with evalplus_run(dataset, data_file, samples, tmp_path / "evalplus-home") as theirs:
        out = subprocess.run(
            [exe, "eval", f"{dataset.value}+", "--dataset", str(data_file), "--samples", str(ours_samples)],
            capture_output=True,
            text=True,
            env={**os.environ, "EXECBOX_URL": url},
            timeout=600,
        )
        their_out, their_err = theirs.communicate(timeout=600)
    assert out.returncode == 0, out.stderr
    assert theirs.returncode == 0, their_err[-3000:]
    ours_lines = out.stdout.splitlines()
    assert ours_lines == summary_lines(their_out), their_out
    ours = json.loads((ours_dir / "samples_eval_results.json").read_text())
    evalplus = json.loads((tmp_path / "samples_eval_results.json").read_text())
    assert ours["hash"] == evalplus["hash"]
    assert sorted(ours["eval"]) == sorted(evalplus["eval"]) == sorted(ids)
    for task_id in ids:
        assert ours["eval"][task_id] == evalplus["eval"][task_id], task_id
    # The set is what it claims to be: every bug passes base and fails plus (Mbpp/2's is right as a set).
    for task_id, bug in PLUS_ONLY_BUGS.items():
        if task_id in ours["eval"] and bug is not None:
            [record] = [r for r in ours["eval"][task_id] if r["solution"] == bug]
            verdict = ("pass", "pass") if task_id == "Mbpp/2" else ("pass", "fail")
            assert (record["base_status"], record["plus_status"]) == verdict, task_id


def test_humaneval_32_root_is_judged_by_its_oracle_where_evalplus_031_fails_every_sample(
    client: Client, tmp_path: Path, cache: Path
) -> None:
    # evalplus/eval/__init__.py checks find_zero with `assert abs(_poly(*inp, out)) <= atol; continue`:
    # the `continue` skips `details[i] = True`, so untrusted_check calls every run a failure.
    from evalplus.eval import untrusted_check
    from evalplus.gen.util import trusted_exec

    data = load_evalplus(
        Dataset.HUMANEVAL, str(subset_file(Dataset.HUMANEVAL, ["HumanEval/32"], tmp_path / "32.jsonl"))
    )
    task = data.tasks["HumanEval/32"]
    expected, times = trusted_exec(task.reference, task.base_input, task.entry_point, record_time=True)
    status, details = untrusted_check(
        "humaneval", task.reference, task.base_input, task.entry_point, expected, task.atol, times, fast_check=True
    )
    assert (status, list(details)) == ("fail", [])
    report = evaluate_plus(client, data, [{"task_id": "HumanEval/32", "solution": task.reference}])
    assert report.base_pass_at_k == {"pass@1": 1.0} and report.plus_pass_at_k == {"pass@1": 1.0}
    # A wrong root still fails.
    wrong = task.prompt + "    return 0.5\n"
    report = evaluate_plus(client, data, [{"task_id": "HumanEval/32", "solution": wrong}])
    assert report.base_pass_at_k == {"pass@1": 0.0}


# ---------------------------------------------------------------- outputs bigger than a record

# Mbpp/255's plus input 85 returns 1,663,740 rows (~1 GB encoded) and needs EvalPlus's 4 GiB: the
# full datasets run it in bench/evalplus.py. Here its four inputs of ~80,000 rows (38 MB each).
MBPP_255_HUGE_INPUT = 85


def mbpp_255_without_its_huge_input(path: Path) -> Path:
    with gzip.open(releases()[Dataset.MBPP], "rt", encoding="utf-8") as fh:
        [record] = [json.loads(line) for line in fh if json.loads(line)["task_id"] == "Mbpp/255"]
    del record["plus_input"][MBPP_255_HUGE_INPUT]
    path.write_text(json.dumps(record) + "\n", encoding="utf-8")
    return path


def test_outputs_bigger_than_a_record_are_compared_by_their_digest(client: Client, tmp_path: Path, cache: Path) -> None:
    humaneval = load_evalplus(
        Dataset.HUMANEVAL, str(subset_file(Dataset.HUMANEVAL, ["HumanEval/100"], tmp_path / "100.jsonl"))
    )
    mbpp = load_evalplus(Dataset.MBPP, str(mbpp_255_without_its_huge_input(tmp_path / "255.jsonl")))
    # HumanEval/100's largest output (1,000,000 numbers, 8 MB) still travels whole; Mbpp/255's don't.
    wrong = {
        "HumanEval/100": "def make_a_pile(n):\n    return [n + 2 * i for i in range(n)] + ([0] if n > 1000 else [])\n",
        "Mbpp/255": (
            "from itertools import combinations_with_replacement\n"
            "def combinations_colors(l, n):\n"
            "    rows = list(combinations_with_replacement(l, n))\n"
            "    return rows if len(rows) < 10000 else rows[::-1]\n"
        ),
    }
    for data in (humaneval, mbpp):
        truth = compute_groundtruth(client, data, directory=cache, memory_mb=1024)
        [(task_id, task)] = data.tasks.items()
        digests = [e for e in truth.suite(task_id, "plus").expected if isinstance(e, dict) and "$digest" in e]
        assert len(digests) == (0 if task_id == "HumanEval/100" else 4), task_id
        assert all(d["bytes"] > MAX_VALUE_BYTES for d in digests), digests
        # Some rows hold floats, and still EvalPlus compares them with == alone (the task's atol is 0
        # and no output is a float or a list of floats), which a digest does (but for 1 == 1.0).
        assert task.atol == 0
        samples = [{"task_id": task_id, "solution": task.reference}, {"task_id": task_id, "solution": wrong[task_id]}]
        # Limits far from EvalPlus's 1 s floor: what is tested is the comparison, on a busy machine.
        report = evaluate_plus(client, data, samples, groundtruth=truth, memory_mb=1024, min_time_limit=5)
        right, bug = report.samples
        assert right.base_passed and right.plus_passed, (right.base.failure, right.plus and right.plus.failure)
        assert bug.base_passed and not bug.plus_passed
        assert bug.plus is not None and bug.plus.failure is not None
        assert bug.plus.failure.category == "wrong answer", bug.plus.failure
        assert len(str(bug.plus.fail_inputs)) < 1000  # the input that failed, not the output


def test_an_output_bigger_than_the_job_memory_is_reported_and_the_service_goes_on(
    client: Client, tmp_path: Path, cache: Path
) -> None:
    data = load_evalplus(Dataset.MBPP, str(subset_file(Dataset.MBPP, ["Mbpp/255"], tmp_path / "255.jsonl")))
    with pytest.raises(GroundTruthError, match=r"out of memory on Mbpp/255 plus input 85 \(memory_mb=512\).*4096"):
        compute_groundtruth(client, data, directory=cache, memory_mb=512)
    assert client.run("print(6 * 7)").stdout == "42\n"


# ---------------------------------------------------------------- the HTML report in a browser


@contextmanager
def browser_page() -> Iterator[DevTools]:
    with headless_chromium("the report test", window="1200,1500") as ws_url:
        tools = DevTools(ws_url)
        try:
            yield tools
        finally:
            tools.close()


def test_the_html_report_shows_the_numbers_in_a_browser(url: str, tmp_path: Path, cache: Path) -> None:
    ids = [t for t in PLUS_ONLY_BUGS if t.startswith("HumanEval/")]
    data_file = subset_file(Dataset.HUMANEVAL, ids, tmp_path / "subset.jsonl")
    data = load_evalplus(Dataset.HUMANEVAL, str(data_file))
    samples = tmp_path / "samples.jsonl"
    # One sample per task: the bug where there is one, else the canonical solution.
    chosen = [{"task_id": t, "solution": PLUS_ONLY_BUGS[t] or task.reference} for t, task in data.tasks.items()]
    samples.write_text("".join(json.dumps(s) + "\n" for s in chosen))
    report_path = tmp_path / "report.html"
    exe = os.path.join(os.path.dirname(sys.executable), "execbox")
    out = subprocess.run(
        [
            exe,
            "eval",
            "humaneval+",
            "--dataset",
            str(data_file),
            "--samples",
            str(samples),
            "--report",
            str(report_path),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "EXECBOX_URL": url},
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    # 5 tasks: all pass base; only HumanEval/2 passes plus.
    assert out.stdout.splitlines() == [
        "humaneval (base tests)",
        "pass@1:\t1.000",
        "humaneval+ (base + extra tests)",
        "pass@1:\t0.200",
    ]
    page = report_path.read_text()
    assert "<script" not in page and "http://" not in page and "https://" not in page  # self-contained
    with browser_page() as tools:
        tools.call("Page.enable")
        tools.call("Page.navigate", url=report_path.as_uri())
        tools.wait_event("Page.loadEventFired", time.monotonic() + 30)
        text = tools.call("Runtime.evaluate", expression="document.body.innerText")["result"]["value"]
        shot = base64.b64decode(tools.call("Page.captureScreenshot", format="png")["data"])
    assert "humaneval (base tests) pass@1\n1.000" in text
    assert "humaneval+ (base + extra tests) pass@1\n0.200" in text
    assert "base pass, plus fail 4" in text
    for label in ("wrong answer", "exception: ValueError", "timeout"):
        assert label in text
    assert "HumanEval/13\ttimeout\t[987654321, 123456789]" in text
    assert shot.startswith(b"\x89PNG") and len(shot) > 10_000
    target = os.environ.get("EXECBOX_REPORT_SCREENSHOT")  # set to refresh docs/images/ for the README
    if target:
        Path(target).write_bytes(shot)
