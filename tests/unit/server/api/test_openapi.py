"""The OpenAPI document is one clients can generate from: readable operation ids, the error
envelope on every error response, and the schema of each NDJSON stream line."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from execbox._codes import ErrorCode
from execbox_server.app import create_app
from execbox_server.settings import Settings

ENVELOPE = {"$ref": "#/components/schemas/ErrorEnvelope"}


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return create_app(Settings()).openapi()


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            yield method, path, operation


def test_every_operation_has_a_unique_operation_id_without_path_noise(doc: dict[str, Any]) -> None:
    ids = [op["operationId"] for _, _, op in operations(doc)]
    assert len(ids) == len(set(ids)), ids
    for method, path, op in operations(doc):
        operation_id = op["operationId"]
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", operation_id), (method, path, operation_id)
        assert "v1" not in operation_id and not operation_id.endswith(f"_{method}"), operation_id


def test_the_operation_ids_clients_call_by_name(doc: dict[str, Any]) -> None:
    by_route = {(method, path): op["operationId"] for method, path, op in operations(doc)}
    assert by_route[("post", "/v1/sessions")] == "create_session"
    assert by_route[("post", "/v1/sessions/{session_id}/execute")] == "execute_in_session"
    assert by_route[("post", "/v1/sessions/{session_id}/execute/stream")] == "execute_in_session_stream"
    assert by_route[("post", "/v1/execute")] == "execute"
    assert by_route[("post", "/v1/batch/stream")] == "run_batch_stream"


def test_every_error_response_declared_is_the_envelope(doc: dict[str, Any]) -> None:
    checked = 0
    for method, path, op in operations(doc):
        for status, response in op["responses"].items():
            if int(status) < 400:
                continue
            assert response["content"] == {"application/json": {"schema": ENVELOPE}}, (method, path, status)
            assert response["x-error-codes"], (method, path, status)
            assert all(ErrorCode(code) for code in response["x-error-codes"])
            checked += 1
    assert checked > 50
    assert "HTTPValidationError" not in doc["components"]["schemas"]


def test_every_api_route_declares_401_and_500_and_every_body_route_422_and_413(doc: dict[str, Any]) -> None:
    for method, path, op in operations(doc):
        responses = op["responses"]
        assert "500" in responses, (method, path)
        if path.startswith("/v1") and path != "/v1/info":  # /v1/info is open, like /readyz
            assert "401" in responses, (method, path)
        if "requestBody" in op:
            assert {"413", "422"} <= set(responses), (method, path)


def test_an_error_code_is_declared_under_the_status_it_is_answered_with(doc: dict[str, Any]) -> None:
    create = doc["paths"]["/v1/sessions"]["post"]["responses"]
    assert create["422"]["x-error-codes"] == ["invalid_request", "invalid_limits"]
    assert create["429"]["x-error-codes"] == ["too_many_sessions", "quota_exceeded"]
    assert "Retry-After" in create["503"]["headers"]
    execute = doc["paths"]["/v1/sessions/{session_id}/execute"]["post"]["responses"]
    assert execute["409"]["x-error-codes"] == ["session_busy"]
    assert doc["paths"]["/readyz"]["get"]["responses"]["503"]["x-error-codes"] == ["engine_unavailable", "pool_warming"]


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def line_schema(doc: dict[str, Any], path: str) -> str:
    content = doc["paths"][path]["post"]["responses"]["200"]["content"]
    assert set(content) == {"application/x-ndjson"}
    return str(content["application/x-ndjson"]["schema"]["$ref"]).rsplit("/", 1)[-1]


@pytest.mark.parametrize("path", ["/v1/sessions/{session_id}/execute/stream", "/v1/execute/stream"])
def test_execution_streams_reference_the_event_schemas(doc: dict[str, Any], path: str) -> None:
    name = line_schema(doc, path)
    assert name == "ExecutionStreamLine"
    line = doc["components"]["schemas"][name]
    events = {ref.rsplit("/", 1)[-1] for ref in refs(line)}
    assert {"StdoutEvent", "StderrEvent", "ResultEvent", "ErrorEvent", "DoneEvent", "ErrorEnvelope"} <= events
    [discriminated] = [option for option in line["anyOf"] if "discriminator" in option]
    assert discriminated["discriminator"]["propertyName"] == "type"
    assert set(discriminated["discriminator"]["mapping"]) == {"stdout", "stderr", "result", "error", "done"}


def test_the_batch_stream_references_the_result_and_summary_lines(doc: dict[str, Any]) -> None:
    name = line_schema(doc, "/v1/batch/stream")
    line = doc["components"]["schemas"][name]
    [discriminated] = [option for option in line["anyOf"] if "discriminator" in option]
    assert set(discriminated["discriminator"]["mapping"]) == {"result", "summary"}
    assert ENVELOPE in line["anyOf"]


def test_every_reference_in_the_document_resolves(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    for ref in refs(doc):
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[-1] in schemas, ref


def test_info_is_documented_with_its_model_and_errors_with_their_reason(doc: dict[str, Any]) -> None:
    info = doc["paths"]["/v1/info"]["get"]
    assert info["responses"]["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Info"}
    assert "401" not in info["responses"]
    assert {"node", "version", "image", "capacity", "load"} <= set(doc["components"]["schemas"]["Info"]["properties"])
    assert "reason" in doc["components"]["schemas"]["ErrorBody"]["properties"]
