"""Every machine-readable error code the service sends, defined once.

The service raises errors carrying these codes (``execbox_server.errors``) and the SDK maps
them to exception classes (``execbox._exceptions``); both import this enum, so a code cannot
exist on one side only. Codes are part of the wire contract: add, never rename.
"""

from __future__ import annotations

from execbox._compat import StrEnum

__all__ = ["ErrorCode", "ErrorReason"]


class ErrorCode(StrEnum):
    # The request itself
    BAD_REQUEST = "bad_request"  # 400
    INVALID_REQUEST = "invalid_request"  # 422: the body does not validate
    INVALID_LIMITS = "invalid_limits"  # 422: a limit above the server's maximum
    INVALID_PATH = "invalid_path"  # 422: a file path the sandbox refuses
    REQUEST_TOO_LARGE = "request_too_large"  # 413
    FILE_TOO_LARGE = "file_too_large"  # 413
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"  # 415
    METHOD_NOT_ALLOWED = "method_not_allowed"  # 405
    # Who is asking
    UNAUTHORIZED = "unauthorized"  # 401
    FORBIDDEN = "forbidden"  # 403
    # What is asked for
    NOT_FOUND = "not_found"  # 404: no such route
    SESSION_NOT_FOUND = "session_not_found"  # 404: no such session for this key
    FILE_NOT_FOUND = "file_not_found"  # 404
    SESSION_BUSY = "session_busy"  # 409: another execution is running
    SANDBOX_UNAVAILABLE = "sandbox_unavailable"  # 409: the session's sandbox is being replaced
    # Capacity
    TOO_MANY_SESSIONS = "too_many_sessions"  # 429: the server holds its maximum
    QUOTA_EXCEEDED = "quota_exceeded"  # 429: this key holds its share
    POOL_EXHAUSTED = "pool_exhausted"  # 503: no kernel or worker became free in time
    POOL_WARMING = "pool_warming"  # 503 from /readyz
    QUEUE_TIMEOUT = "queue_timeout"  # 504: no worker within the request's own budget (SandboxFusion routes)
    # The service
    ENGINE_UNAVAILABLE = "engine_unavailable"  # 503: the container engine does not answer
    SANDBOX_START_FAILED = "sandbox_start_failed"  # 503
    SHUTTING_DOWN = "shutting_down"  # 503
    INTERNAL_ERROR = "internal_error"  # 500
    HTTP_ERROR = "http_error"  # any other HTTP status without a code of its own


class ErrorReason(StrEnum):
    """Why an error happened, where its code alone does not say (``ErrorBody.reason``).

    Sent with ``session_not_found`` when several instances serve behind one proxy: the session's
    id names a node (``s_<hex>.<node>``), and the request reached another one or none.
    """

    WRONG_NODE = "wrong_node"  # an instance was asked for a session of another node
    NODE_UNAVAILABLE = "node_unavailable"  # the proxy has no healthy instance for the session's node
