"""SandboxFusion's /run_code as verl uses it, against execbox's own /v1/batch, in the same run.

1. The 164 canonical HumanEval programs: one /run_code request per program, 32 in flight (verl's
   ThreadPoolExecutor on a small host), vs. the same programs as one /v1/batch request.
2. 50 small C++ stdin/stdout programs, 5 test cases each, sent verl-style (one /run_code request per
   test case, the same program five times) vs. /v1/batch (one job per test case, language "cpp").
   Every source carries a nonce of its phase, so each phase compiles every program itself: the
   compile cache can only help within a phase, as it does for verl's repeated program.

A 504 is retried as verl retries it (3 attempts, 1 s then 2 s apart), and the latency of a
/run_code includes those retries. Prints programs/s, p50/p99 latency of one /run_code (under that
load, and alone), the compile cache's hit rate (from /metrics when the service counts it; else a
build reported with no compile time, which only a cached build has; /v1/batch: `compile.cached`),
and /run_code's time per program over /v1/batch's (goal: within 1.5x), as a markdown table. Every
verdict is checked, so a fast wrong answer cannot pass for speed; the failures are counted by kind.

Run: `python bench/sandboxfusion.py` (starts its own server on 127.0.0.1) or
`python bench/sandboxfusion.py --url http://HOST:PORT [--api-key KEY]`.
"""

from __future__ import annotations

import argparse
import math
import random
import re
import secrets
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests.support
sys.path.insert(0, str(Path(__file__).parent))  # _util
from tests.support.server import local_server

from _util import header, pct
from execbox import Client
from execbox.evals import load_humaneval

CONCURRENCY = 32  # verl: ThreadPoolExecutor(max_workers=max(32, cpu_count * 5)) per check_correctness
TIMEOUT_S = 10  # verl's default per test case (compile and run alike)
OK = "ok"
VERL_504_PAUSES_S = (1.0, 2.0, 0.0)  # verl retries a 504 (and nothing else): 3 attempts, 1 s then 2 s apart


# ---------------------------------------------------------------- the C++ set: 10 families x 5 variants


@dataclass(frozen=True)
class Family:
    name: str
    source: str  # C++17 with {K}: each variant is a different program (and compile)
    reference: Callable[[str, int], str]  # stdin, K -> the expected stdout (trailing newline aside)
    make_input: Callable[[random.Random], str]


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split()]


def _collatz(n: int) -> int:
    steps = 0
    while n != 1:
        n = n // 2 if n % 2 == 0 else 3 * n + 1
        steps += 1
    return steps


def _fib_mod(n: int, m: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, (a + b) % m
    return a


def _count_primes(lo: int, hi: int) -> int:
    return sum(1 for p in range(max(lo, 2), hi + 1) if all(p % d for d in range(2, math.isqrt(p) + 1)))


_HEAD = "#include <bits/stdc++.h>\nusing namespace std;\n"

FAMILIES = [
    Family(
        "sum_scaled",
        _HEAD + 'int main(){{long long x,s=0;while(cin>>x)s+=x;cout<<s*{K}<<"\\n";}}',
        lambda s, k: str(sum(_ints(s)) * k),
        lambda r: " ".join(str(r.randint(-1000, 1000)) for _ in range(r.randint(1, 50))),
    ),
    Family(
        "max_plus",
        _HEAD + 'int main(){{long long x,m=LLONG_MIN;while(cin>>x)m=max(m,x);cout<<m+{K}<<"\\n";}}',
        lambda s, k: str(max(_ints(s)) + k),
        lambda r: " ".join(str(r.randint(-(10**9), 10**9)) for _ in range(r.randint(1, 40))),
    ),
    Family(
        "reverse_words",
        _HEAD + "int main(){{vector<string> w;string t;while(cin>>t)w.push_back(t);reverse(w.begin(),w.end());"
        'cout<<{K}<<":";for(auto&x:w)cout<<\' \'<<x;cout<<"\\n";}}',
        lambda s, k: f"{k}:" + "".join(" " + w for w in reversed(s.split())),
        lambda r: " ".join("".join(r.choice("abcxyz") for _ in range(r.randint(1, 6))) for _ in range(r.randint(1, 9))),
    ),
    Family(
        "count_vowels",
        _HEAD + "int main(){{string s((istreambuf_iterator<char>(cin)),istreambuf_iterator<char>());long long c=0;"
        'for(char ch:s)if(string("aeiouAEIOU").find(ch)!=string::npos)c++;cout<<c+{K}<<"\\n";}}',
        lambda s, k: str(sum(ch in "aeiouAEIOU" for ch in s) + k),
        lambda r: " ".join("".join(r.choice("HelloWorldAEIOUxyz") for _ in range(r.randint(1, 8))) for _ in range(12)),
    ),
    Family(
        "fib_mod",
        _HEAD + "int main(){{long long n,a=0,b=1,m=1000+{K};cin>>n;for(long long i=0;i<n;i++){{long long t=(a+b)%m;"
        'a=b;b=t;}}cout<<a<<"\\n";}}',
        lambda s, k: str(_fib_mod(int(s), 1000 + k)),
        lambda r: str(r.randint(0, 5000)),
    ),
    Family(
        "count_primes",
        _HEAD + "int main(){{long long n;cin>>n;long long lo={K},hi=n+{K},c=0;for(long long p=max(lo,2LL);p<=hi;p++)"
        '{{bool q=true;for(long long d=2;d*d<=p;d++)if(p%d==0){{q=false;break;}}if(q)c++;}}cout<<c<<"\\n";}}',
        lambda s, k: str(_count_primes(k, int(s) + k)),
        lambda r: str(r.randint(1, 3000)),
    ),
    Family(
        "gcd_lcm",
        _HEAD + "int main(){{long long a,b;cin>>a>>b;long long g=__gcd(a,b);cout<<g*{K}<<' '<<a/g*b<<\"\\n\";}}",
        lambda s, k: (lambda a, b: f"{math.gcd(a, b) * k} {a // math.gcd(a, b) * b}")(*_ints(s)),
        lambda r: f"{r.randint(1, 10**6)} {r.randint(1, 10**6)}",
    ),
    Family(
        "sort_desc",
        _HEAD + "int main(){{vector<long long> v;long long x;while(cin>>x)v.push_back(x);sort(v.rbegin(),v.rend());"
        'for(size_t i=0;i<v.size();i++)cout<<(i?" ":"")<<v[i]+{K};cout<<"\\n";}}',
        lambda s, k: " ".join(str(x + k) for x in sorted(_ints(s), reverse=True)),
        lambda r: " ".join(str(r.randint(-99, 99)) for _ in range(r.randint(1, 30))),
    ),
    Family(
        "collatz",
        _HEAD + 'int main(){{long long n,s=0;cin>>n;n+={K};while(n!=1){{n=n%2?3*n+1:n/2;s++;}}cout<<s<<"\\n";}}',
        lambda s, k: str(_collatz(int(s) + k)),
        lambda r: str(r.randint(1, 10**6)),
    ),
    Family(
        "digit_sum",
        _HEAD + "int main(){{string s;cin>>s;long long t=0;for(char c:s)t+=c-'0';cout<<t*{K}<<\"\\n\";}}",
        lambda s, k: str(sum(int(c) for c in s.strip()) * k),
        lambda r: "".join(r.choice("0123456789") for _ in range(r.randint(1, 60))),
    ),
]


@dataclass(frozen=True)
class CppProgram:
    name: str
    source: str
    cases: list[tuple[str, str]]  # (stdin, expected stdout)

    def salted(self, nonce: str) -> str:
        """The same program under another name in the compile cache."""
        return f"// {nonce}\n{self.source}"


def cpp_programs(seed: int = 12) -> list[CppProgram]:
    rng = random.Random(seed)
    programs = []
    for family in FAMILIES:
        for k in range(2, 7):
            inputs = [family.make_input(rng) for _ in range(5)]
            cases = [(s, family.reference(s, k)) for s in inputs]
            programs.append(CppProgram(f"{family.name}_{k}", family.source.format(K=k), cases))
    return programs


# ---------------------------------------------------------------- measuring


@dataclass
class Phase:
    label: str
    programs: int
    wall_s: float
    ok: int  # requests or jobs whose verdict was the expected one
    total: int
    latencies: list[float] = field(default_factory=list)
    cache_hits: int | None = None
    cache_lookups: int | None = None
    failures: Counter[str] = field(default_factory=Counter)

    @property
    def per_program_ms(self) -> float:
        return self.wall_s / self.programs * 1000


def verl_body(code: str, language: str, stdin: str | None) -> dict[str, Any]:
    """Exactly what verl's call_sandbox_api sends for one test case."""
    return {
        "compile_timeout": TIMEOUT_S,
        "run_timeout": TIMEOUT_S,
        "code": code,
        "stdin": stdin,
        "memory_limit_MB": 1024,
        "language": language,
        "files": {},
        "fetch_files": [],
    }


def run_code_phase(
    http: httpx.Client, label: str, programs: int, requests: list[tuple[dict[str, Any], str | None]]
) -> Phase:
    """Send every request to /run_code, CONCURRENCY at once, retrying a 504 as verl does (latency counts the
    retries); a request passes when the run is Success and, when an expected stdout is given, its stdout
    matches as verl compares (trailing newlines aside)."""

    def one(item: tuple[dict[str, Any], str | None]) -> tuple[str, float, bool | None]:
        """(verdict, seconds, whether the build came from the cache: None without a compile stage)."""
        body, expected = item
        t0 = time.perf_counter()
        for attempt, pause in enumerate(VERL_504_PAUSES_S):
            r = http.post("/run_code", json=body)
            if r.status_code != 504 or attempt == len(VERL_504_PAUSES_S) - 1:
                break
            time.sleep(pause)
        elapsed = time.perf_counter() - t0
        if r.status_code != 200:
            return f"HTTP {r.status_code}" + (" after verl's retries" if r.status_code == 504 else ""), elapsed, None
        data = r.json()
        build, run = data.get("compile_result"), data.get("run_result") or {}
        # A build from the cache ran no compiler: its stage reports no time at all.
        cached = None if build is None else build.get("execution_time") == 0
        if data.get("status") != "Success":
            stage = "compile" if build is not None and not run else "run"
            failed = build if stage == "compile" else run
            return f"{data.get('status')}: {stage} {failed.get('status') if failed else '-'}", elapsed, cached
        if expected is not None and (run.get("stdout") or "").rstrip("\n") != expected.rstrip("\n"):
            return "wrong output", elapsed, cached
        return OK, elapsed, cached

    t0 = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        outcomes = list(pool.map(one, requests))
    wall = time.perf_counter() - t0
    phase = Phase(
        label, programs, wall, sum(v == OK for v, _, _ in outcomes), len(outcomes), [t for _, t, _ in outcomes]
    )
    phase.failures = Counter(v for v, _, _ in outcomes if v != OK)
    builds = [c for _, _, c in outcomes if c is not None]
    if builds:
        phase.cache_hits, phase.cache_lookups = sum(builds), len(builds)
    return phase


def batch_phase(
    client: Client, label: str, programs: int, jobs: list[dict[str, Any]], expected: list[str | None]
) -> Phase:
    t0 = time.perf_counter()
    results = client.batch(jobs)
    wall = time.perf_counter() - t0
    ok = sum(
        r.ok and (want is None or r.stdout.rstrip("\n") == want.rstrip("\n"))
        for r, want in zip(results, expected, strict=True)
    )
    compiled = [r.compile for r in results if r.compile is not None]
    phase = Phase(label, programs, wall, ok, len(results))
    phase.failures = Counter(
        r.status.value if not r.ok else "wrong output"
        for r, want in zip(results, expected, strict=True)
        if not (r.ok and (want is None or r.stdout.rstrip("\n") == want.rstrip("\n")))
    )
    if compiled:
        phase.cache_hits, phase.cache_lookups = sum(c.cached for c in compiled), len(compiled)
    return phase


_CACHE_SAMPLE = re.compile(r"^(execbox_compile_cache\w*?)(?:_total)?(\{[^}]*\})? ([0-9.e+-]+)$", re.M)


def compile_cache_counts(http: httpx.Client) -> dict[str, float]:
    """The service's compile-cache counters from /metrics (name and labels -> value); empty without any."""
    text = http.get("/metrics").text
    return {f"{m[1]}{m[2] or ''}": float(m[3]) for m in _CACHE_SAMPLE.finditer(text) if not m[1].endswith("_created")}


def cache_delta(before: dict[str, float], after: dict[str, float]) -> tuple[int, int] | None:
    """(hits, lookups) between two readings, from counters whose name or labels say hit or miss."""
    delta = {k: after[k] - before.get(k, 0.0) for k in after}
    hits = sum(v for k, v in delta.items() if "hit" in k)
    misses = sum(v for k, v in delta.items() if "miss" in k)
    if not hits and not misses:
        return None
    return int(hits), int(hits + misses)


def alone_latencies(http: httpx.Client, n: int) -> list[float]:
    """One /run_code at a time: request to reply, nothing else in flight."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = http.post("/run_code", json=verl_body("print(1)", "python", None))
        out.append(time.perf_counter() - t0)
        assert r.status_code == 200 and r.json()["status"] == "Success", r.text
    return out


# ---------------------------------------------------------------- the run


@contextmanager
def service(url: str | None) -> Iterator[str]:
    if url:
        yield url.rstrip("/")
        return
    with tempfile.TemporaryDirectory() as tmp:
        # No kernel spares (this benchmark uses none); batch workers at the service's defaults.
        with local_server(Path(tmp) / "server.log", min_ready="0") as server:
            yield server.url


def progress(phase: Phase) -> None:
    """One line per phase as it ends (the table comes at the end; a long run shows where it is)."""
    print(f"  {phase.label}: {phase.wall_s:.1f} s, {phase.ok}/{phase.total} ok", file=sys.stderr, flush=True)


def fmt_rate(phase: Phase) -> str:
    return f"{phase.programs / phase.wall_s:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running execbox (default: start one on 127.0.0.1)")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--alone", type=int, default=100, help="sequential /run_code requests for the latency alone")
    args = parser.parse_args()

    problems = load_humaneval()
    humaneval = [problems[t].program({"task_id": t, "completion": p.canonical_solution}) for t, p in problems.items()]
    cpp = cpp_programs()
    run_id = secrets.token_hex(4)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}

    with service(args.url) as url:
        limits = httpx.Limits(max_connections=CONCURRENCY * 2, max_keepalive_connections=CONCURRENCY * 2)
        with (
            httpx.Client(base_url=url, timeout=120, limits=limits, headers=headers) as http,
            Client(url, api_key=args.api_key, timeout=600) as client,
        ):
            # Warm-up: workers started for both paths, the C++ toolchain read once.
            run_code_phase(http, "warm", 1, [(verl_body("print(1)", "python", None), "1")] * (CONCURRENCY * 2))
            client.batch(["print(1)"] * 20)
            client.batch([{"code": cpp[0].salted("warm"), "language": "cpp", "stdin": "1"}])

            he_rc = run_code_phase(
                http,
                "HumanEval-164 via /run_code",
                len(humaneval),
                [(verl_body(p, "python", None), None) for p in humaneval],
            )
            progress(he_rc)
            he_batch = batch_phase(
                client,
                "HumanEval-164 via /v1/batch",
                len(humaneval),
                [{"code": p, "timeout_s": TIMEOUT_S} for p in humaneval],
                [None] * len(humaneval),
            )
            progress(he_batch)

            nonce = f"run_code {run_id}"
            before = compile_cache_counts(http)
            cpp_rc = run_code_phase(
                http,
                "C++ 50x5 via /run_code",
                len(cpp),
                [(verl_body(p.salted(nonce), "cpp", stdin), want) for p in cpp for stdin, want in p.cases],
            )
            progress(cpp_rc)
            rc_cache = cache_delta(before, compile_cache_counts(http))
            if rc_cache:  # the service's own count, when it keeps one, over the zero-time estimate
                cpp_rc.cache_hits, cpp_rc.cache_lookups = rc_cache
            nonce = f"batch {run_id}"
            cpp_batch = batch_phase(
                client,
                "C++ 50x5 via /v1/batch",
                len(cpp),
                [
                    {"code": p.salted(nonce), "language": "cpp", "stdin": stdin, "timeout_s": TIMEOUT_S}
                    for p in cpp
                    for stdin, _ in p.cases
                ],
                [want for p in cpp for _, want in p.cases],
            )
            progress(cpp_batch)
            alone = alone_latencies(http, args.alone)

    header("SandboxFusion /run_code (verl-style, 32 in flight) vs /v1/batch")
    print()
    print("| workload | path | programs/s | requests ok | /run_code p50 | /run_code p99 | compile cache hits |")
    print("|---|---|---|---|---|---|---|")
    for phase in (he_rc, he_batch, cpp_rc, cpp_batch):
        p50 = f"{pct(phase.latencies, 50) * 1000:.0f} ms" if phase.latencies else ""
        p99 = f"{pct(phase.latencies, 99) * 1000:.0f} ms" if phase.latencies else ""
        hits = (
            f"{phase.cache_hits}/{phase.cache_lookups} ({phase.cache_hits / phase.cache_lookups:.0%})"
            if phase.cache_hits is not None and phase.cache_lookups
            else "n/a"
        )
        workload, path = phase.label.split(" via ")
        print(f"| {workload} | {path} | {fmt_rate(phase)} | {phase.ok}/{phase.total} | {p50} | {p99} | {hits} |")
    print()
    print("| workload | /run_code per program | /v1/batch per program | ratio | goal |")
    print("|---|---|---|---|---|")
    for rc, batch in ((he_rc, he_batch), (cpp_rc, cpp_batch)):
        ratio = rc.per_program_ms / batch.per_program_ms
        verdict = "met" if ratio <= 1.5 else "missed"
        if rc.ok != rc.total or batch.ok != batch.total:
            verdict = "not comparable: wrong verdicts"
        workload = rc.label.split(" via ")[0]
        print(
            f"| {workload} | {rc.per_program_ms:.1f} ms | {batch.per_program_ms:.1f} ms | {ratio:.2f}x "
            f"| <= 1.5x ({verdict}) |"
        )
    print()
    print(
        f"One /run_code alone (print(1), {len(alone)} sequential): p50 {pct(alone, 50) * 1000:.1f} ms, "
        f"p99 {pct(alone, 99) * 1000:.1f} ms"
    )
    failed = [p for p in (he_rc, he_batch, cpp_rc, cpp_batch) if p.ok != p.total]
    for phase in failed:
        print(f"WRONG VERDICTS in {phase.label}: {dict(phase.failures.most_common())}")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
