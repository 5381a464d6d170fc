"""Service errors: every code is an ErrorCode, every error answers in the one envelope."""

from __future__ import annotations

import ast
from pathlib import Path

import httpx
import pytest

import execbox_server
from execbox._codes import ErrorCode
from execbox_server import errors
from execbox_server.app import create_app
from execbox_server.errors import (
    FileNotFound,
    FileTooLarge,
    InvalidPath,
    SandboxUnavailable,
    ServiceError,
    SessionBusy,
    file_error,
)
from execbox_server.settings import Settings

SERVICE = Path(execbox_server.__file__).parent


def all_subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *all_subclasses(sub)]
    return found


def test_every_service_error_code_is_an_error_code_member() -> None:
    classes = all_subclasses(ServiceError)
    assert classes
    for cls in [ServiceError, *classes]:
        assert isinstance(cls.code, ErrorCode), cls
        assert 400 <= cls.status_code < 600, cls


def test_every_service_error_class_lives_in_the_errors_module() -> None:
    # Routers raise them; none defines its own (that is how codes got written twice).
    assert {cls.__module__ for cls in all_subclasses(ServiceError)} == {"execbox_server.errors"}


def test_the_docstring_tree_lists_every_service_error() -> None:
    assert errors.__doc__ is not None
    for cls in all_subclasses(ServiceError):
        assert f"{cls.__name__} " in errors.__doc__ and cls.code.value in errors.__doc__, cls


def string_constants(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    }


# Outside this rule for now: the backend's file helper spells the code it hands to
# errors.file_error (backends/ is being regrouped separately), and the load generator, a test
# helper on its way out of the service package, counts answers by code.
NOT_ERROR_CODES = {
}


def test_no_error_code_is_spelled_as_a_string_outside_the_errors_module() -> None:
    codes = {code.value for code in ErrorCode}
    offenders = {}
    for path in SERVICE.rglob("*.py"):
        rel = path.relative_to(SERVICE).as_posix()
        if rel == "errors.py":
            continue
        spelled = (string_constants(path) & codes) - NOT_ERROR_CODES.get(rel, set())
        if spelled:
            offenders[rel] = sorted(spelled)
    assert not offenders


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        ("invalid_path", InvalidPath),
        ("file_not_found", FileNotFound),
        ("file_too_large", FileTooLarge),
        ("sandbox_unavailable", SandboxUnavailable),
        ("anything the sandbox made up", InvalidPath),
    ],
)
def test_a_refused_file_request_becomes_the_error_of_its_code(code: str, cls: type[ServiceError]) -> None:
    error = file_error(code, "the sandbox said no")
    assert type(error) is cls and error.message == "the sandbox said no"


def test_an_error_answers_with_its_status_envelope_and_retry_after() -> None:
    response = SessionBusy("busy", retry_after=2.4).response()
    assert response.status_code == 409
    assert response.body == b'{"error":{"code":"session_busy","message":"busy"}}'
    assert response.headers["Retry-After"] == "2"


async def test_framework_errors_answer_in_the_envelope_with_an_error_code() -> None:
    app = create_app(Settings())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        missing = await http.get("/v1/nowhere")
        wrong_method = await http.put("/healthz")
        unparsable = await http.post("/v1/sessions", content=b"{", headers={"content-type": "application/json"})
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, ErrorCode.NOT_FOUND)
    assert (wrong_method.status_code, wrong_method.json()["error"]["code"]) == (405, ErrorCode.METHOD_NOT_ALLOWED)
    assert unparsable.status_code == 422 and unparsable.json()["error"]["code"] == ErrorCode.INVALID_REQUEST


async def test_an_unexpected_failure_is_a_500_in_the_envelope() -> None:
    app = create_app(Settings())

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        r = await http.get("/boom")
    assert r.status_code == 500
    assert r.json() == {"error": {"code": "internal_error", "message": "the request failed inside the service"}}
