"""Prometheus metrics, structured logs and request ids.

Metrics live in a registry owned by the app (no process globals); labels are bounded
(statuses, causes, route templates — never session ids). Logs are one line per request and
per lifecycle event, JSON when ``EXECBOX_LOG_FORMAT=json``; user code and API keys are never
logged.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["Metrics", "RequestLog", "configure_logging", "request_id"]

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("execbox_request_id", default="-")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.acquire_wait = Histogram(
            "execbox_pool_acquire_wait_seconds",
            "Time a request waited for a warm kernel.",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10),
            registry=r,
        )
        self.execution_duration = Histogram(
            "execbox_execution_duration_seconds",
            "Wall time of executions.",
            ["kind"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=r,
        )
        self.executions = Counter(
            "execbox_executions", "Executions by kind and status.", ["kind", "status"], registry=r
        )
        self.kernel_replacements = Counter(
            "execbox_kernel_replacements", "Kernels killed or lost and replaced, by cause.", ["cause"], registry=r
        )
        self.output_truncations = Counter(
            "execbox_output_truncations", "Executions whose output the caps cut.", ["kind"], registry=r
        )
        self.batch_jobs = Counter("execbox_batch_jobs", "Batch jobs by status.", ["status"], registry=r)
        self.compile_cache = Counter(
            "execbox_compile_cache",
            "Compiled jobs by where their build came from: hit (the cache), shared (another job's build "
            "or failure of the same source, waited for), miss (compiled).",
            ["result"],
            registry=r,
        )
        self.queue_timeouts = Counter(
            "execbox_queue_timeouts",
            "Requests answered 504 because no worker or kernel could be had within their own budget, by route.",
            ["route"],
            registry=r,
        )
        self.sandboxfusion_replies = Counter(
            "execbox_sandboxfusion_replies",
            "SandboxFusion-compatible replies by route and status (Success, Failed, SandboxError).",
            ["route", "status"],
            registry=r,
        )
        self.http_requests = Counter(
            "execbox_http_requests",
            "HTTP requests by method, route and status.",
            ["method", "route", "status"],
            registry=r,
        )

    def observe_gauges(self, read: Callable[[], Iterable[Metric]]) -> None:
        """Gauges computed at scrape time (pool sizes, sessions, workers, kernel starts)."""

        class _Live(Collector):
            def collect(self) -> Iterable[Metric]:
                return read()

        self.registry.register(_Live())


def gauge(name: str, doc: str, values: dict[str, float], label: str | None = None) -> GaugeMetricFamily:
    if label is None:
        family = GaugeMetricFamily(name, doc, value=next(iter(values.values())))
        return family
    family = GaugeMetricFamily(name, doc, labels=[label])
    for key, value in values.items():
        family.add_metric([key], value)
    return family


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": request_id.get(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            data.update(extra)
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extra = getattr(record, "fields", None)
        rid = request_id.get()
        if isinstance(extra, dict) and extra:
            base += " " + " ".join(f"{k}={v}" for k, v in extra.items())
        return f"{base} request_id={rid}" if rid != "-" else base


def configure_logging(fmt: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # uvicorn's own access log would duplicate ours (and knows no request id).
    logging.getLogger("uvicorn.access").disabled = True


class RequestLog:
    """ASGI middleware: a request id (``X-Request-ID`` in and out) and one log line per request."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        self.log = logging.getLogger("execbox.http")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers", [])).get(b"x-request-id", b"").decode("latin-1")
        rid = incoming if _SAFE_ID.match(incoming) else secrets.token_hex(8)
        token = request_id.set(rid)
        started = time.monotonic()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "?")
            self.metrics.http_requests.labels(method, template, str(status)).inc()
            if template not in ("/healthz", "/readyz", "/metrics"):
                self.log.info(
                    "%s %s %s",
                    method,
                    template,
                    status,
                    extra={"fields": {"status": status, "ms": round((time.monotonic() - started) * 1000, 1)}},
                )
            request_id.reset(token)
