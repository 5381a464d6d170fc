"""What the SDK needs from Python 3.11, on 3.10 too.

The SDK installs into training environments (vLLM, verl, TRL) that still run 3.10. On 3.11
and later (always the service's case) these are the standard library's own; on 3.10 they come
from ``typing_extensions``, which pydantic already depends on.
"""

from __future__ import annotations

import sys
from enum import Enum

__all__ = ["Self", "StrEnum"]

if sys.version_info >= (3, 11):  # noqa: UP036  (the SDK supports 3.10)
    from enum import StrEnum
    from typing import Self
else:  # pragma: no cover - exercised on 3.10 only
    from typing_extensions import Self  # noqa: UP035

    class StrEnum(str, Enum):  # noqa: UP042
        """``enum.StrEnum`` of 3.11: members are str, and ``str(member)`` is the value."""

        def __str__(self) -> str:
            return str(self.value)
