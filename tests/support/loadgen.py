"""A bounded load generator: N sessions, each executing in a loop for a while (tests, bench).

Every request increments a counter in its session's kernel and must get back exactly the
next number: a lost or duplicated execution shows up as a gap or a repeat.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import httpx

__all__ = ["LoadReport", "run_load"]

DOCUMENTED_503 = {"pool_exhausted", "engine_unavailable"}


@dataclass
class LoadReport:
    sessions: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    ok: int = 0
    sequence_errors: int = 0
    status_errors: dict[str, int] = field(default_factory=dict)
    undocumented_5xx: int = 0
    create_failures: int = 0

    @property
    def throughput(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0


async def run_load(url: str, *, sessions: int, seconds: float, api_key: str | None = None) -> LoadReport:
    """Run the load against ``url``; the request loops stop by themselves after ``seconds``."""
    report = LoadReport(sessions=sessions, seconds=seconds)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=sessions + 8, max_keepalive_connections=sessions + 8)
    async with httpx.AsyncClient(base_url=url, timeout=60, headers=headers, limits=limits) as http:

        async def create() -> str | None:
            for _ in range(60):
                r = await http.post("/v1/sessions", json={"timeout_s": 10})
                if r.status_code == 201:
                    return str(r.json()["id"])
                if r.status_code == 503 and r.json()["error"]["code"] in DOCUMENTED_503:
                    await asyncio.sleep(float(r.headers.get("retry-after", "1")))
                    continue
                report.undocumented_5xx += r.status_code >= 500
                break
            report.create_failures += 1
            return None

        ids = await asyncio.gather(*(create() for _ in range(sessions)))
        start = time.monotonic()
        deadline = start + seconds

        async def loop(sid: str) -> None:
            expected = 0
            await http.post(f"/v1/sessions/{sid}/execute", json={"code": "n = 0"})
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                try:
                    r = await http.post(f"/v1/sessions/{sid}/execute", json={"code": "n += 1\nn"})
                except httpx.HTTPError as exc:
                    name = type(exc).__name__
                    report.status_errors[name] = report.status_errors.get(name, 0) + 1
                    return  # the counter's state is unknown now: this session stops
                if r.status_code != 200:
                    code = r.json().get("error", {}).get("code", str(r.status_code))
                    report.status_errors[code] = report.status_errors.get(code, 0) + 1
                    if r.status_code >= 500 and code not in DOCUMENTED_503:
                        report.undocumented_5xx += 1
                    continue
                report.latencies.append(time.perf_counter() - t0)
                ex = r.json()
                expected += 1
                if ex["status"] != "ok" or ex["results"][0]["data"]["text/plain"] != str(expected):
                    report.sequence_errors += 1
                    expected = int(ex["results"][0]["data"]["text/plain"]) if ex["status"] == "ok" else expected
                else:
                    report.ok += 1

        await asyncio.gather(*(loop(sid) for sid in ids if sid))
        report.seconds = time.monotonic() - start
        await asyncio.gather(*(http.delete(f"/v1/sessions/{sid}") for sid in ids if sid))
    return report
