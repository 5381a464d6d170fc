"""Service settings, read from ``EXECBOX_*`` environment variables.

Settings are built once by the caller (``create_app(Settings())``) and injected; nothing
reads the environment at import time.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["Settings"]

# A DNS label (RFC 1123): pod and host names fit, and it contains no dot, so a session id
# ``s_<hex>.<node>`` splits at its first dot.
NODE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")

# AF_UNIX socket paths are limited to 107 bytes; the kernel's socket names add "/k-N".
MAX_STATE_DIR_LEN = 60


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EXECBOX_", extra="ignore")

    # --- listening
    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8000, ge=1, le=65535)
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated bearer keys; when set, every /v1 call must carry one.",
    )

    node_name: str | None = Field(
        None,
        description="This instance's name among several behind one proxy (a DNS label, e.g. the Kubernetes node "
        "name): session ids carry it (s_<hex>.<node>) and every response says it (X-Execbox-Node). Unset: one node.",
    )

    # --- sandbox
    image: str = Field("execbox-sandbox-python:latest", description="Sandbox image.")
    docker_url: str | None = Field(None, description="Docker engine URL; default: DOCKER_HOST or the local socket.")
    state_dir: Path = Field(Path("/run/execbox"), description="Where per-kernel IPC socket dirs live.")
    cgroup_root: Path = Field(
        Path("/sys/fs/cgroup"),
        description="Where the engine host's cgroup filesystem is visible, for per-execution CPU time and peak "
        "memory; a service in a container mounts the host's /sys/fs/cgroup and points this at it.",
    )
    memory_mb: int = Field(512, ge=64, description="Default memory limit of a sandbox (memory = memory+swap).")
    max_memory_mb: int = Field(4096, ge=64, description="Largest memory limit a session may ask for.")
    cpus: float = Field(1.0, gt=0, description="Default CPU quota of a sandbox, in cores.")
    max_cpus: float = Field(2.0, gt=0, description="Largest CPU quota a session may ask for.")
    # 224: room for a few hundred short-lived children, yet a fork bomb of sleeping kernel
    # copies (~2 MiB each) hits this limit before a 512 MiB sandbox runs out of memory.
    pids_limit: int = Field(224, ge=16, description="Process/thread limit of a sandbox.")
    tmpfs_mb: int = Field(256, ge=8, description="Size of the sandbox's writable work directory (and of /tmp).")
    preimport: str = Field("numpy,matplotlib", description="Modules warm kernels import in advance.")
    restore: Literal["auto", "off"] = Field(
        "auto",
        description="Start kernels by restoring a checkpoint of one warm template kernel instead of booting each. "
        "auto: where this machine can (CRIU >= 4.2 at EXECBOX_CRIU_PATH, the engine's EXECBOX_RESTORE_RUNTIME "
        "runtime, the service on the engine's host), else boot, with the reason in /v1/info and the log; off: boot.",
    )
    restore_runtime: str = Field(
        "execbox", description="The engine's name for scripts/execbox-runtime (dockerd --add-runtime NAME=PATH)."
    )
    criu_path: Path = Field(
        Path("/opt/execbox/criu/bin/criu"), description="CRIU >= 4.2 (scripts/ensure-criu.sh installs it there)."
    )

    # --- pool
    min_ready: int = Field(2, ge=0, description="Warm kernels kept ready.")
    max_total: int = Field(16, ge=1, description="Most kernels alive at once (ready + starting + leased).")
    max_ready: int = Field(
        8,
        ge=0,
        description="Most warm kernels kept when demand is high: beyond min_ready the pool keeps what the acquires "
        "of the last 10 s would use up while two kernels start, up to this (~70 MiB each); min_ready when idle.",
    )
    # 4: a restore spends most of its ~0.5 s waiting on CRIU and the engine, so two at a time
    # left the cores idle half the time; boots at the spare weight yield to live sessions anyway.
    max_starting: int = Field(4, ge=1, description="Most kernels starting at once.")
    acquire_timeout_s: float = Field(4.0, ge=0, description="How long a request waits for a free kernel.")
    # A deadline for a hung start, not a slow one: spares boot at a low CPU weight so they yield
    # to live sessions, and on a busy 2-core machine (load 15) a boot measured over 30 s of wall
    # time for ~1.2 s of CPU. Too short a deadline there discards kernels that were nearly ready.
    kernel_start_timeout_s: float = Field(
        120.0, gt=0, description="A kernel (or batch worker) not ready by then is discarded."
    )

    # --- executions
    default_timeout_s: float = Field(30.0, gt=0, description="Execution timeout when a request gives none.")
    max_timeout_s: float = Field(300.0, gt=0, description="Largest execution timeout a request may ask for.")
    interrupt_grace_s: float = Field(2.0, ge=0, description="Wait after an interrupt before the kernel is killed.")
    max_output_bytes: int = Field(
        1_048_576,
        ge=1024,
        description="Output kept per execution by default: stdout, stderr and results together.",
    )
    max_output_bytes_limit: int = Field(
        16_777_216, ge=1024, description="Largest output budget a session or request may ask for."
    )
    max_output_messages: int = Field(
        10_000,
        ge=100,
        description="Output messages after which an execution is stopped (status output_limit).",
    )
    max_output_rate: int = Field(
        1_000, ge=10, description="Output messages per second after which an execution is stopped (output_limit)."
    )
    max_results: int = Field(50, ge=1, description="Rich results kept per execution.")
    max_code_bytes: int = Field(1_000_000, ge=1, description="Largest code accepted in a request.")

    # --- batch (fork-server workers)
    # A worker runs one job at a time, so concurrent one-job requests (/run_code: verl sends one
    # request per test case, 32 at once) need as many workers as jobs in flight, most of them
    # waiting on a sleep or a wall-clock timeout rather than a CPU. A batch request uses at most
    # batch_lanes of them: CPU-bound harness work gains nothing from more workers than cores.
    batch_workers: int = Field(16, ge=1, description="Most fork-server worker containers alive at once.")
    batch_lanes: int | None = Field(
        None, ge=1, description="Most workers one batch request uses at once. Unset: the host's CPU count."
    )
    batch_min_workers: int = Field(1, ge=0, description="Warm workers started ahead of the first batch.")
    batch_idle_s: float = Field(
        60.0, gt=0, description="Workers beyond batch_min_workers that stay idle this long are removed."
    )
    batch_memory_mb: int = Field(
        1024,
        ge=128,
        description="Memory of one batch job: its default and its maximum (the worker container gets 256 MiB more "
        "for the fork server).",
    )
    batch_cpus: float = Field(1.0, gt=0, description="CPU quota of one worker container.")
    batch_default_timeout_s: float = Field(10.0, gt=0, description="Timeout of a job that gives none.")
    batch_compile_timeout_s: float = Field(10.0, gt=0, description="Compile timeout of a job that gives none (cpp).")
    batch_max_jobs: int = Field(10_000, ge=1, description="Most jobs in one batch request.")
    max_batch_body_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="Largest batch request body.")

    # --- SandboxFusion compatibility (/run_code, /run_jupyter, /v1/ping)
    sandboxfusion_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="A second listener serving only the SandboxFusion routes without an API key (verl sends none). "
        "0: off.",
    )
    sandboxfusion_host: str = Field("127.0.0.1", description="Address of the SandboxFusion listener.")
    sandboxfusion_key: SecretStr | None = Field(
        None,
        description="The API key whose quotas and workers the keyless SandboxFusion listener uses; required when "
        "EXECBOX_API_KEYS is set, and must be one of them.",
    )
    sandboxfusion_queue_s: float = Field(
        8.0,
        gt=0,
        description="How long a /run_code request waits for a worker before it is answered 504 (verl retries only "
        "504; its HTTP timeout is compile + run + 10 s).",
    )

    # --- the HTTP edge: per-key quotas and slow clients
    # Unset quotas are derived from the global limits when two or more keys are configured
    # (half each, so no one key can starve another); with one key or none there is one
    # tenant, and a share below the global limit would only turn work away.
    key_max_sessions: int | None = Field(
        None,
        ge=1,
        description=(
            "Sessions one API key may hold at once; a running one-shot execution counts as one (it holds a kernel). "
            "Unset: half of min(EXECBOX_MAX_SESSIONS, EXECBOX_MAX_TOTAL) with two or more keys, else no per-key limit."
        ),
    )
    key_max_executions: int | None = Field(
        None,
        ge=1,
        description=(
            "Executions one API key may run at once (session and one-shot, streamed or not). "
            "Unset: half of EXECBOX_MAX_TOTAL with two or more keys, else no per-key limit."
        ),
    )
    key_max_batch_workers: int | None = Field(
        None,
        ge=1,
        description=(
            "Batch workers one API key's batches may use at once. "
            "Unset: half of EXECBOX_BATCH_WORKERS with two or more keys, else no per-key limit."
        ),
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="A connection whose request line and headers take longer than this is closed."
    )
    body_timeout_s: float = Field(
        30.0, gt=0, description="A request body that stalls this long between two reads is abandoned and closed."
    )

    # --- operations
    log_format: Literal["text", "json"] = Field("text", description="Log lines as text or JSON.")
    log_level: str = Field("INFO", description="Log level.")
    shutdown_grace_s: float = Field(10.0, ge=0, description="On SIGTERM, how long running requests may finish.")
    max_file_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="Largest file uploaded or downloaded.")

    # --- sessions
    session_ttl_s: float = Field(600.0, gt=0, description="Idle sessions are deleted after this long.")
    session_max_lifetime_s: float = Field(
        3600.0, gt=0, description="Sessions are deleted this long after creation, however busy."
    )
    max_sessions: int = Field(64, ge=1)

    @field_validator("node_name", mode="before")
    @classmethod
    def _check_node_name(cls, value: Any) -> Any:
        if value == "":
            return None  # an empty variable (e.g. a compose default) means unset
        if isinstance(value, str) and not NODE_NAME.fullmatch(value):
            raise ValueError(
                f"EXECBOX_NODE_NAME {value!r} is not a DNS label: lower-case letters, digits and '-', "
                "at most 63, starting and ending with a letter or digit"
            )
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> Self:
        if len(str(self.state_dir)) > MAX_STATE_DIR_LEN:
            raise ValueError(
                f"EXECBOX_STATE_DIR must be at most {MAX_STATE_DIR_LEN} characters "
                "(unix socket paths are limited to 107 bytes)"
            )
        if self.memory_mb > self.max_memory_mb:
            raise ValueError("EXECBOX_MEMORY_MB must not exceed EXECBOX_MAX_MEMORY_MB")
        if self.cpus > self.max_cpus:
            raise ValueError("EXECBOX_CPUS must not exceed EXECBOX_MAX_CPUS")
        if self.default_timeout_s > self.max_timeout_s:
            raise ValueError("EXECBOX_DEFAULT_TIMEOUT_S must not exceed EXECBOX_MAX_TIMEOUT_S")
        if self.max_output_bytes > self.max_output_bytes_limit:
            raise ValueError("EXECBOX_MAX_OUTPUT_BYTES must not exceed EXECBOX_MAX_OUTPUT_BYTES_LIMIT")
        if self.min_ready > self.max_total:
            raise ValueError("EXECBOX_MIN_READY must not exceed EXECBOX_MAX_TOTAL")
        if self.sandboxfusion_port:
            keys = {k.get_secret_value() for k in self.api_keys}
            if keys and (self.sandboxfusion_key is None or self.sandboxfusion_key.get_secret_value() not in keys):
                raise ValueError(
                    "EXECBOX_SANDBOXFUSION_PORT with EXECBOX_API_KEYS needs EXECBOX_SANDBOXFUSION_KEY, one of the "
                    "keys: the keyless listener acts as that key"
                )
        if not self.api_keys and not _is_loopback(self.host):
            raise ValueError(
                f"refusing to listen on {self.host} without authentication: set EXECBOX_API_KEYS or listen on 127.0.0.1"
            )
        return self


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
