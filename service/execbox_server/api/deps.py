"""Dependencies injected into the routers: the services built by the app's lifespan."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from pydantic import SecretStr

from execbox_server.backends.base import ServiceBackend
from execbox_server.batch import BatchRunner
from execbox_server.errors import Unauthorized
from execbox_server.observability import Metrics
from execbox_server.pool import KernelPool
from execbox_server.quotas import Quotas
from execbox_server.sessions import SessionManager
from execbox_server.settings import Settings

__all__ = ["Owner", "Services", "ServicesDep", "authenticate", "get_owner", "get_services"]


@dataclass
class Services:
    settings: Settings
    backend: ServiceBackend
    pool: KernelPool[Any]
    sessions: SessionManager
    batch: BatchRunner
    metrics: Metrics
    quotas: Quotas
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


# Dependencies are ``async def``: FastAPI runs plain ``def`` ones in a thread pool, a thread
# hop on every request for what is a dictionary lookup.
async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def authenticate(keys: Sequence[SecretStr], authorization: str) -> str | None:
    """The owner an ``Authorization`` header value stands for: a fingerprint of its key.

    ``None`` when no keys are configured (authentication off: every caller is one owner).

    Raises:
        Unauthorized: keys are configured and the header carries none that matches.
    """
    if not keys:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("this server requires 'Authorization: Bearer <key>'")
    supplied = token.strip().encode()
    match = None
    # Compare against every key, in constant time each, so timing says nothing.
    for key in keys:
        if hmac.compare_digest(supplied, key.get_secret_value().encode()):
            match = key.get_secret_value()
    if match is None:
        raise Unauthorized("the API key is not valid for this server")
    return hashlib.sha256(match.encode()).hexdigest()[:16]


async def get_owner(request: Request, services: ServicesDep) -> str | None:
    """The caller's identity: a fingerprint of its API key, or None when auth is off.

    The ``KeyCheck`` middleware has already refused a bad key before the body was read;
    this check stays so that a route is never reachable without one, whatever the wiring.

    Raises:
        Unauthorized: keys are configured and the request carries none that matches.
    """
    return authenticate(services.settings.api_keys, request.headers.get("authorization", ""))


Owner = Annotated[str | None, Depends(get_owner)]
