"""Batch jobs on one worker, one after another: each plants something, the next looks for it.

Every test runs its jobs with ``concurrency=1`` so that they share one worker container and
follow each other on it (two of them pipelined, as the service always does). A job must see
nothing of any other job — no files, no IPC objects, no processes, no request still buffered,
no heap page holding another job's code, stdin or expected values — and must not be able to
disturb the jobs after it.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from execbox import Client, JobResult, JobStatus

# Everything a job can write in a worker container (checked with `find / -writable`), plus
# the IPC namespace: SysV objects and POSIX message queues outlive the process that made them.
PLANT_EVERYWHERE = r"""
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
rt = ctypes.CDLL("librt.so.1", use_errno=True)
home = os.environ.get("HOME", "/home/sandbox")
for d in {os.getcwd(), home, "/home/sandbox", "/tmp", "/dev/shm"}:
    try:
        with open(os.path.join(d, "planted"), "w") as fh:
            fh.write("secret")
        os.makedirs(os.path.join(d, "planted-dir", "deeper"), exist_ok=True)
        os.symlink("/etc/passwd", os.path.join(d, "planted-link"))
        os.mkfifo(os.path.join(d, "planted-fifo"))
    except OSError as exc:
        print("could not plant in", d, exc)
for d in {os.getcwd(), home}:
    try:
        os.setxattr(d, "user.planted", b"secret")
    except OSError as exc:
        print("no xattr on", d, exc)
assert libc.shmget(0x5EC7E7, 4096, 0o1666) >= 0, ctypes.get_errno()
assert libc.msgget(0x5EC7E8, 0o1666) >= 0, ctypes.get_errno()
assert libc.semget(0x5EC7E9, 1, 0o1666) >= 0, ctypes.get_errno()
assert rt.mq_open(b"/planted", 0o100 | 2, 0o666, None) >= 0, ctypes.get_errno()
print("planted in", os.getcwd())
"""

LOOK_EVERYWHERE = r"""
import json, os
home = os.environ.get("HOME", "/home/sandbox")
seen = {}
own = __file__  # the job's own source, as `python main.py` has it: not left by anyone
for d in sorted({os.getcwd(), home, "/home/sandbox", "/tmp", "/dev/shm", "/dev/mqueue"}):
    try:
        seen[d] = sorted(f for f in os.listdir(d) if os.path.join(d, f) != own)
    except OSError as exc:
        seen[d] = repr(exc)
for d in {os.getcwd(), home}:
    seen["xattr " + d] = os.listxattr(d)
for kind in ("shm", "msg", "sem"):
    with open("/proc/sysvipc/" + kind) as fh:
        seen["sysv " + kind] = fh.read().splitlines()[1:]
print(json.dumps(seen))
"""


def by_id(results: list[JobResult]) -> dict[str | None, JobResult]:
    return {r.id: r for r in results}


def looked(result: JobResult) -> dict[str, Any]:
    assert result.ok, result
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert isinstance(data, dict)
    return data


def test_nothing_a_job_writes_survives_into_the_next_job(client: Client) -> None:
    results = client.batch(
        [
            {"id": "plant", "code": PLANT_EVERYWHERE},
            {"id": "look", "code": LOOK_EVERYWHERE},
            {"id": "plant-again", "code": PLANT_EVERYWHERE},
            {"id": "look-again", "code": LOOK_EVERYWHERE},
        ],
        concurrency=1,
    )
    r = by_id(results)
    for plant, look in (("plant", "look"), ("plant-again", "look-again")):
        assert r[plant].ok and "could not plant" not in r[plant].stdout, r[plant]
        seen = looked(r[look])
        assert all(not found for found in seen.values()), seen


def test_a_job_cannot_prepare_the_working_directory_of_the_next_one(client: Client) -> None:
    # The planter guesses the next jobs' directories from its own (a counter in the name was
    # enough once), creates them world-writable with a file inside, and poisons its own.
    plant = r"""
import os, re
cwd = os.getcwd()
guesses = {cwd}
m = re.search(r"(\d+)$", cwd)
if m:
    n = int(m.group(1))
    guesses |= {cwd[: m.start()] + str(n + k) for k in range(1, 40)}
for g in sorted(guesses):
    try:
        os.makedirs(g, exist_ok=True)
        os.chmod(g, 0o777)
        with open(os.path.join(g, "planted"), "w") as fh:
            fh.write("from the job before")
    except OSError:
        pass
print(cwd)
"""
    look = (
        "import json, os\n"
        "listing = [f for f in os.listdir('.') if os.path.abspath(f) != __file__]  # its own main.py aside\n"
        "print(json.dumps([os.getcwd(), listing, os.environ.get('HOME')]))\n"
    )
    results = client.batch(
        [{"id": "plant", "code": plant}, *({"id": f"look{i}", "code": look} for i in range(3))],
        concurrency=1,
    )
    r = by_id(results)
    assert r["plant"].ok, r["plant"]
    for i in range(3):
        assert r[f"look{i}"].ok, r[f"look{i}"]
        cwd, listing, home = json.loads(r[f"look{i}"].stdout)
        assert listing == [], (cwd, listing)
        assert home == cwd


def test_a_daemon_left_by_a_job_is_gone_before_the_next_job_starts(client: Client) -> None:
    daemon = r"""
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        for i in range(10**6):
            try:
                open(f"/tmp/daemon-{i}", "w").close()
            except OSError:
                pass
            time.sleep(0.001)
    os._exit(0)
time.sleep(0.05)
"""
    look = r"""
import json, os, time
mine = os.getpid()
others = []
for pid in os.listdir("/proc"):
    if pid.isdigit() and int(pid) != mine:
        try:
            with open(f"/proc/{pid}/status") as fh:
                uid = next(line.split()[1] for line in fh if line.startswith("Uid:"))
        except (OSError, StopIteration):
            continue
        if uid == str(os.getuid()):
            others.append(pid)
time.sleep(0.2)  # a survivor would keep writing
print(json.dumps([others, sorted(os.listdir("/tmp"))]))
"""
    results = client.batch([{"id": "daemon", "code": daemon}, {"id": "look", "code": look}], concurrency=1)
    r = by_id(results)
    assert r["daemon"].ok, r["daemon"]
    assert r["look"].ok, r["look"]
    assert json.loads(r["look"].stdout) == [[], []]


def test_a_job_cannot_disturb_the_job_after_it(client: Client) -> None:
    # Fill the shared-memory tmpfs, park a SysV segment, lock up its directories, shrink the
    # scratch space: the next job still gets a working directory and its full scratch space.
    wreck = r"""
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
with open("/dev/shm/fill", "wb") as fh:
    try:
        while True:
            fh.write(b"\0" * (1 << 20))
    except OSError:
        pass
libc.shmget(0x5EC7EA, 8 << 20, 0o1600)
for d in {os.getcwd(), os.environ.get("HOME", "/home/sandbox"), "/home/sandbox"}:
    try:
        os.chmod(d, 0)
    except OSError:
        pass
"""
    use = r"""
import os
with open("here", "w") as fh:
    fh.write("ok")
with open("/dev/shm/mine", "wb") as fh:
    fh.write(b"\0" * (32 << 20))
with open("/tmp/mine", "wb") as fh:
    fh.write(b"\0" * (32 << 20))
print(open("here").read())
"""
    results = client.batch([{"id": "wreck", "code": wreck}, {"id": "use", "code": use}], concurrency=1)
    r = by_id(results)
    assert r["use"].ok and r["use"].stdout == "ok\n", r["use"]


# What a scanner looks for: the other jobs carry MARK + 12 hex digits in their code, stdin and
# expected values. The scanner's own source holds the pattern, which cannot match itself.
SCAN_OWN_MEMORY = r"""
import ctypes, json, re
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE: /proc/self/mem belongs to us again
pattern = re.compile(rb"QQLEAK[0-9a-f]{12}")
found = set()
with open("/proc/self/maps") as maps, open("/proc/self/mem", "rb", buffering=0) as mem:
    for line in maps:
        span, perms = line.split()[:2]
        if not perms.startswith("r") or line.rstrip().endswith(("[vvar]", "[vsyscall]", "[vvar_vclock]")):
            continue
        start, end = (int(x, 16) for x in span.split("-"))
        chunk = 1 << 20
        for at in range(start, end, chunk):
            try:
                mem.seek(at)
                data = mem.read(min(chunk + 64, end - at))
            except (OSError, OverflowError, ValueError):
                continue
            found.update(m.decode() for m in pattern.findall(data))
print(json.dumps(sorted(found)))
"""


def test_a_job_finds_no_code_stdin_or_expected_values_of_other_jobs_in_its_memory(client: Client) -> None:
    def planted(name: str) -> tuple[dict[str, Any], set[str]]:
        marks = {part: "QQLEAK" + secrets.token_hex(6) for part in ("code", "stdin", "expected", "input")}
        job = {
            "id": name,
            "code": f"# {marks['code']}\ndef f(x):\n    return x\nprint(input())\n",
            "stdin": marks["stdin"] + "\n",
            "tests": {
                "entry_point": "f",
                "cases": [{"input": [marks["input"]], "expected": marks["expected"]}],
            },
        }
        return job, set(marks.values())

    def scanner(name: str) -> dict[str, Any]:
        return {"id": name, "code": SCAN_OWN_MEMORY, "timeout_s": 30}

    jobs: list[dict[str, Any]] = []
    marks: dict[str, set[str]] = {}
    for i in range(3):
        jobs.append(scanner(f"scan{i}"))
        job, mine = planted(f"plant{i}")
        jobs.append(job)
        marks[f"plant{i}"] = mine
    jobs.append(scanner("scan3"))
    results = client.batch(jobs, concurrency=1)
    r = by_id(results)
    everything = set().union(*marks.values())
    for i in range(4):
        result = r[f"scan{i}"]
        assert result.status is JobStatus.OK, result
        found = set(json.loads(result.stdout))
        # Before and after it in the same worker: the previous job's request and output, the
        # next job's request waiting in the socket — none of it may be in its memory.
        assert not found & everything, (f"scan{i}", found & everything)
