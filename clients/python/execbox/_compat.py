"""What the SDK needs from Python 3.11, on 3.10 too.

The SDK installs into training environments (vLLM, verl, TRL) that still run 3.10. On 3.11
and later (always the service's case) these are the standard library's own; on 3.10 they come
from ``typing_extensions``, which pydantic already depends on.
"""

from __future__ import annotations

import sys
from enum import Enum

__all__ = ["Self", "StrEnum", "StrEnum310"]

class StrEnum310(str, Enum):  # noqa: UP042, RUF100
    """``enum.StrEnum`` as the SDK uses it, for 3.10: members are str, ``str(member)`` is the value."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return str(self.value).__format__(spec)


# The noqa holds whether ruff checks this file for 3.10 (the SDK's floor) or 3.11 (the service's).
if sys.version_info >= (3, 11):  # noqa: UP036, RUF100
    from enum import StrEnum
    from typing import Self
else:  # pragma: no cover - exercised on 3.10 only
    from typing_extensions import Self  # noqa: UP035, RUF100

    StrEnum = StrEnum310
