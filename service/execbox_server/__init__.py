"""execbox service: warm Jupyter kernels in locked-down Docker containers behind a FastAPI API."""

import sys

# The SDK runs on 3.10 (pip install execbox); the service does not.
if sys.version_info < (3, 11):  # noqa: UP036
    raise ImportError("execbox[server] needs Python 3.11 or newer (the SDK alone runs on 3.10)")

from execbox_server.app import VERSION, create_app
from execbox_server.settings import Settings

__all__ = ["VERSION", "Settings", "create_app", "serve"]


def serve(settings: Settings | None = None) -> None:
    """Run the service with uvicorn (one worker: the pool lives in this process)."""
    import uvicorn

    from execbox_server.edge import guarded_protocol
    from execbox_server.observability import configure_logging

    settings = settings or Settings()
    configure_logging(settings.log_format, settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        workers=1,
        # pyzmq's asyncio integration measured ~1 ms slower per execution under uvloop.
        loop="asyncio",
        # httptools plus the deadlines uvicorn lacks (request head, stalled body): slowloris.
        http=guarded_protocol(header_timeout_s=settings.header_timeout_s, body_timeout_s=settings.body_timeout_s),
        log_level="info",
        # SIGTERM: stop accepting, let running requests finish this long, then the lifespan
        # shutdown removes every container.
        timeout_graceful_shutdown=max(1, round(settings.shutdown_grace_s)),
        log_config=None,
        # Longer than clients' idle pools keep connections, so a reused connection is not
        # closed under a request (an ambiguous failure a client must not retry blindly).
        timeout_keep_alive=75,
    )
