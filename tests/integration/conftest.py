from __future__ import annotations

import pytest

from execbox import AsyncClient, Client


@pytest.fixture()
def client(url: str):
    with Client(url, timeout=60) as c:
        yield c


@pytest.fixture()
async def aclient(url: str):
    async with AsyncClient(url, timeout=60) as c:
        yield c
