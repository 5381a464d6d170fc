"""README's Python examples run as written (with the URLs pointed at the test's servers)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.fake_llm import fake_llm

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
BLOCKS = [b for b in re.findall(r"```python\n(.*?)```", README, re.S) if "execbox" in b]


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_python_example_runs(code: str, url: str) -> None:
    script = {
        "Write is_prime(n) and test it.": [
            "```python\ndef is_prime(n):\n    return n > 1 and all(n % d for d in range(2, int(n ** 0.5) + 1))\n"
            "print(is_prime(7), is_prime(8))\n```",
            "is_prime works.",
        ]
    }
    with fake_llm(script) as (llm_url, _):
        code = code.replace("http://127.0.0.1:8000", url).replace("http://127.0.0.1:8001/v1", llm_url)
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=180,
            env={**os.environ, "EXECBOX_URL": url},
        )
    assert out.returncode == 0, out.stderr[-2000:]
    if "ex.status, ex.text" in code:
        assert "ok 45" in out.stdout and "42" in out.stdout
    if "ChatClient" in code:
        assert out.stdout.startswith("answered")
