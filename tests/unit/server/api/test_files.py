"""Files in and out of a session through the real routers, on the fake backend's in-memory
working directory: what the sandbox's file helper refuses becomes the API's error code and status."""

from __future__ import annotations

import httpx
import pytest

from execbox_server.api.deps import authenticate
from tests.support.app import Served, fast_settings, served
from tests.support.fake_backend import FakeBackend, FakeKernel


async def new_session(srv: Served, headers: dict[str, str] | None = None) -> tuple[str, FakeKernel]:
    r = await srv.http.post("/v1/sessions", json={}, headers=headers)
    assert r.status_code == 201, r.text
    session_id = r.json()["id"]
    kernel = srv.services.sessions.get(None if headers is None else _owner(srv, headers), session_id).kernel
    assert isinstance(kernel, FakeKernel)
    return session_id, kernel


def _owner(srv: Served, headers: dict[str, str]) -> str | None:
    return authenticate(srv.services.settings.api_keys, headers["Authorization"])


def error_code(r: httpx.Response) -> str:
    return str(r.json()["error"]["code"])


async def test_an_uploaded_file_downloads_byte_for_byte() -> None:
    async with served() as srv:
        sid, kernel = await new_session(srv)
        data = bytes(range(256)) * 4
        up = await srv.http.put(f"/v1/sessions/{sid}/files/data/blob.bin", content=data)
        assert up.status_code == 201, up.text
        assert up.json() == {"name": "blob.bin", "path": "data/blob.bin", "size": len(data), "type": "file"}
        assert kernel.files["data/blob.bin"] == data

        down = await srv.http.get(f"/v1/sessions/{sid}/files/data/blob.bin")
        assert down.status_code == 200
        assert down.content == data
        assert down.headers["content-type"] == "application/octet-stream"
        assert 'filename="blob.bin"' in down.headers["content-disposition"]


async def test_a_listing_shows_files_and_directories_sorted_by_name() -> None:
    async with served() as srv:
        sid, _ = await new_session(srv)
        for path, body in [("b.txt", b"bb"), ("a.txt", b"a"), ("sub/c.txt", b"ccc")]:
            assert (await srv.http.put(f"/v1/sessions/{sid}/files/{path}", content=body)).status_code == 201
        top = await srv.http.get(f"/v1/sessions/{sid}/files")
        assert top.status_code == 200
        assert [(e["name"], e["type"], e["size"]) for e in top.json()] == [
            ("a.txt", "file", 1),
            ("b.txt", "file", 2),
            ("sub", "dir", 0),
        ]
        sub = await srv.http.get(f"/v1/sessions/{sid}/files", params={"dir": "sub"})
        assert [e["path"] for e in sub.json()] == ["sub/c.txt"]


async def test_an_upload_replaces_the_file() -> None:
    async with served() as srv:
        sid, _ = await new_session(srv)
        await srv.http.put(f"/v1/sessions/{sid}/files/f.txt", content=b"first version")
        await srv.http.put(f"/v1/sessions/{sid}/files/f.txt", content=b"2nd")
        assert (await srv.http.get(f"/v1/sessions/{sid}/files/f.txt")).content == b"2nd"


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "missing.txt", 404, "file_not_found"),
        ("GET", "nodir/missing.txt", 404, "file_not_found"),
        # Encoded: httpx would resolve a literal ".." before sending, as any client does.
        ("GET", "a/%2E%2E/%2E%2E/etc/passwd", 422, "invalid_path"),
        ("PUT", "x/%2E%2E/%2E%2E/escape.txt", 422, "invalid_path"),
        ("GET", "%2Fetc%2Fpasswd", 422, "invalid_path"),  # absolute
        ("GET", "bad%5Cname", 422, "invalid_path"),  # backslash
        ("GET", "nul%00name", 422, "invalid_path"),  # refused by the router before the sandbox
        ("GET", "dir", 422, "invalid_path"),  # a directory is not a file
        ("PUT", "dir", 422, "invalid_path"),
        ("PUT", "file.txt/inner.txt", 422, "invalid_path"),  # a file is not a directory
    ],
)
async def test_refused_file_requests_answer_with_the_helpers_code(
    method: str, path: str, status: int, code: str
) -> None:
    async with served() as srv:
        sid, kernel = await new_session(srv)
        kernel.files.update({"dir/inside.txt": b"x", "file.txt": b"y"})
        r = await srv.http.request(method, f"/v1/sessions/{sid}/files/{path}", content=b"data")
        assert (r.status_code, error_code(r)) == (status, code), r.text


async def test_listing_a_missing_directory_is_404_and_a_file_as_directory_is_422() -> None:
    async with served() as srv:
        sid, kernel = await new_session(srv)
        kernel.files["file.txt"] = b"y"
        missing = await srv.http.get(f"/v1/sessions/{sid}/files", params={"dir": "nope"})
        assert (missing.status_code, error_code(missing)) == (404, "file_not_found")
        not_dir = await srv.http.get(f"/v1/sessions/{sid}/files", params={"dir": "file.txt"})
        assert (not_dir.status_code, error_code(not_dir)) == (422, "invalid_path")


async def test_an_upload_over_the_limit_is_413_and_nothing_is_written() -> None:
    settings = fast_settings(max_file_bytes=2048)
    async with served(settings) as srv:
        sid, kernel = await new_session(srv)
        r = await srv.http.put(f"/v1/sessions/{sid}/files/big.bin", content=b"x" * 3000)
        assert (r.status_code, error_code(r)) == (413, "file_too_large")
        assert "big.bin" not in kernel.files


async def test_a_sandbox_file_over_the_limit_is_413_on_download() -> None:
    settings = fast_settings(max_file_bytes=2048)
    async with served(settings, FakeBackend(max_file_bytes=2048)) as srv:
        sid, kernel = await new_session(srv)
        kernel.files["grown.log"] = b"x" * 5000  # written by the user's code, past the limit
        r = await srv.http.get(f"/v1/sessions/{sid}/files/grown.log")
        assert (r.status_code, error_code(r)) == (413, "file_too_large")


async def test_files_of_a_vanished_sandbox_answer_409_sandbox_unavailable() -> None:
    async with served() as srv:
        sid, kernel = await new_session(srv)
        kernel.vanish()
        r = await srv.http.get(f"/v1/sessions/{sid}/files")
        assert (r.status_code, error_code(r)) == (409, "sandbox_unavailable")
        assert "fresh one" in r.json()["error"]["message"]


async def test_files_of_an_unknown_session_are_404_session_not_found() -> None:
    async with served() as srv:
        r = await srv.http.get("/v1/sessions/s_nope/files/a.txt")
        assert (r.status_code, error_code(r)) == (404, "session_not_found")


async def test_another_keys_session_files_are_not_found() -> None:
    settings = fast_settings(api_keys=["key-alice", "key-bob"])
    async with served(settings) as srv:
        alice = {"Authorization": "Bearer key-alice"}
        bob = {"Authorization": "Bearer key-bob"}
        sid, kernel = await new_session(srv, alice)
        kernel.files["secret.txt"] = b"alice's"
        r = await srv.http.get(f"/v1/sessions/{sid}/files/secret.txt", headers=bob)
        assert (r.status_code, error_code(r)) == (404, "session_not_found")
        r = await srv.http.put(f"/v1/sessions/{sid}/files/planted.txt", content=b"bob's", headers=bob)
        assert r.status_code == 404 and "planted.txt" not in kernel.files
        assert (await srv.http.get(f"/v1/sessions/{sid}/files/secret.txt", headers=alice)).content == b"alice's"


async def test_file_access_pushes_the_sessions_idle_expiry_back() -> None:
    async with served() as srv:
        sid, _ = await new_session(srv)
        session = srv.services.sessions.get(None, sid)
        before = session.last_used
        await srv.http.put(f"/v1/sessions/{sid}/files/a.txt", content=b"a")
        assert session.last_used > before
