"""Request checks that depend on the server's settings."""

from __future__ import annotations

from execbox_server.errors import RequestTooLarge
from execbox_server.settings import Settings


def check_code_size(code: str, settings: Settings) -> None:
    """Raises RequestTooLarge when ``code`` is over ``max_code_bytes``."""
    size = len(code.encode("utf-8", "surrogatepass"))
    if size > settings.max_code_bytes:
        raise RequestTooLarge(
            f"code is {size} bytes; this server accepts at most {settings.max_code_bytes} (EXECBOX_MAX_CODE_BYTES)"
        )
