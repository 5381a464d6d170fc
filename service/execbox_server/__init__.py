"""execbox service: warm Jupyter kernels in locked-down Docker containers behind a FastAPI API."""

import sys

# The SDK runs on 3.10 (pip install execbox); the service does not.
if sys.version_info < (3, 11):  # noqa: UP036
    raise ImportError("execbox[server] needs Python 3.11 or newer (the SDK alone runs on 3.10)")

from execbox_server.app import VERSION, create_app
from execbox_server.settings import Settings

__all__ = ["VERSION", "Settings", "create_app", "serve"]


def serve(settings: Settings | None = None) -> None:
    """Run the service with uvicorn (one worker: the pool lives in this process), plus the keyless
    SandboxFusion listener when ``EXECBOX_SANDBOXFUSION_PORT`` is set."""
    import asyncio

    from execbox_server.listeners import Listeners
    from execbox_server.observability import configure_logging

    settings = settings or Settings()
    configure_logging(settings.log_format, settings.log_level)
    listeners = Listeners(create_app(settings), settings)
    asyncio.run(listeners.serve())
