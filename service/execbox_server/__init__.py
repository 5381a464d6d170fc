"""execbox service: warm Jupyter kernels in locked-down Docker containers behind a FastAPI API."""

from execbox_server.app import VERSION, create_app
from execbox_server.settings import Settings

__all__ = ["VERSION", "Settings", "create_app", "serve"]


def serve(settings: Settings | None = None) -> None:
    """Run the service with uvicorn (one worker: the pool lives in this process)."""
    import logging

    import uvicorn

    settings = settings or Settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        workers=1,
        # pyzmq's asyncio integration measured ~1 ms slower per execution under uvloop.
        loop="asyncio",
        http="httptools",
        log_level="info",
        timeout_graceful_shutdown=10,
    )
