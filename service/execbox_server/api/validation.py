"""Request checks that depend on the server's settings."""

from __future__ import annotations

from typing import Any

from execbox._models import ErrorEnvelope
from execbox_server.errors import RequestTooLarge
from execbox_server.settings import Settings

# Declared on every route that takes a per-key quota, so the OpenAPI document (and the
# clients and fuzzers built from it) knows the 429 and its envelope.
QUOTA_RESPONSE: dict[int | str, dict[str, Any]] = {
    429: {
        "model": ErrorEnvelope,
        "description": "This API key's quota is used up (`quota_exceeded`, see Retry-After)",
    }
}


def check_code_size(code: str, settings: Settings) -> None:
    """Raises RequestTooLarge when ``code`` is over ``max_code_bytes``."""
    size = len(code.encode("utf-8", "surrogatepass"))
    if size > settings.max_code_bytes:
        raise RequestTooLarge(
            f"code is {size} bytes; this server accepts at most {settings.max_code_bytes} (EXECBOX_MAX_CODE_BYTES)"
        )
