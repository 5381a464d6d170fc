"""One limits policy for sessions, one-shot executions and batch jobs: defaults fill what is
left out; a value over the maximum is refused the same way everywhere, never lowered."""

from __future__ import annotations

import annotated_types
import pytest
from pydantic import BaseModel

from execbox._models import BatchJob, OneShotRequest, SessionCreate, SessionLimits
from execbox_server.errors import InvalidLimits
from execbox_server.limits import (
    JOB_MEMORY_FLOOR_MB,
    SANDBOX_MEMORY_FLOOR_MB,
    JobLimits,
    batch_jobs,
    execution_timeout,
    job_limits,
    one_shot_limits,
    session_limits,
)
from execbox_server.settings import Settings

SETTINGS = Settings(
    memory_mb=512,
    max_memory_mb=2048,
    cpus=1.0,
    max_cpus=2.0,
    default_timeout_s=30,
    max_timeout_s=300,
    max_output_bytes=1_048_576,
    max_output_bytes_limit=16_777_216,
    batch_memory_mb=1024,
    batch_default_timeout_s=10,
)


def test_a_session_that_asks_for_nothing_gets_the_defaults() -> None:
    assert session_limits(SETTINGS) == SessionLimits(memory_mb=512, cpus=1.0, timeout_s=30, max_output_bytes=1_048_576)


def test_a_session_gets_what_it_asks_for_up_to_the_maxima() -> None:
    limits = session_limits(SETTINGS, memory_mb=2048, cpus=2.0, timeout_s=300, max_output_bytes=16_777_216)
    assert limits == SessionLimits(memory_mb=2048, cpus=2.0, timeout_s=300, max_output_bytes=16_777_216)


def test_a_one_shot_has_the_limits_of_a_session() -> None:
    asked = {"memory_mb": 1000, "cpus": 0.5, "timeout_s": 7, "max_output_bytes": 4096}
    assert one_shot_limits(SETTINGS, **asked) == session_limits(SETTINGS, **asked)


def test_a_batch_job_that_asks_for_nothing_gets_the_batch_defaults() -> None:
    assert job_limits(SETTINGS) == JobLimits(timeout_s=10, memory_mb=1024, max_output_bytes=1_048_576)


@pytest.mark.parametrize(
    ("field", "value", "maximum", "setting"),
    [
        ("memory_mb", 4096, 2048, "EXECBOX_MAX_MEMORY_MB"),
        ("cpus", 2.5, "2", "EXECBOX_MAX_CPUS"),
        ("timeout_s", 301, 300, "EXECBOX_MAX_TIMEOUT_S"),
        ("max_output_bytes", 16_777_217, 16_777_216, "EXECBOX_MAX_OUTPUT_BYTES_LIMIT"),
    ],
)
def test_a_session_limit_over_the_maximum_is_refused_naming_field_value_maximum_and_setting(
    field: str, value: float, maximum: object, setting: str
) -> None:
    for resolve in (session_limits, one_shot_limits):
        with pytest.raises(InvalidLimits) as caught:
            resolve(SETTINGS, **{field: value})
        assert caught.value.status_code == 422 and caught.value.code == "invalid_limits"
        assert caught.value.message == f"{field}={value} is above this server's maximum of {maximum} ({setting})"


@pytest.mark.parametrize(
    ("field", "value", "maximum", "setting"),
    [
        ("timeout_s", 301, 300, "EXECBOX_MAX_TIMEOUT_S"),
        ("memory_mb", 1025, 1024, "EXECBOX_BATCH_MEMORY_MB"),
        ("max_output_bytes", 16_777_217, 16_777_216, "EXECBOX_MAX_OUTPUT_BYTES_LIMIT"),
    ],
)
def test_a_batch_job_limit_over_the_maximum_is_refused_not_lowered(
    field: str, value: float, maximum: object, setting: str
) -> None:
    with pytest.raises(InvalidLimits) as caught:
        job_limits(SETTINGS, **{field: value})
    assert caught.value.message == f"{field}={value} is above this server's maximum of {maximum} ({setting})"


def test_an_execution_timeout_defaults_to_the_sessions_and_is_bounded_by_the_maximum() -> None:
    assert execution_timeout(SETTINGS, None, 12.5) == 12.5
    assert execution_timeout(SETTINGS, 300, 12.5) == 300
    with pytest.raises(InvalidLimits, match=r"timeout_s=300.5 is above .* 300 \(EXECBOX_MAX_TIMEOUT_S\)"):
        execution_timeout(SETTINGS, 300.5, 12.5)


def test_the_same_value_over_the_maximum_gets_the_same_answer_from_every_kind() -> None:
    answers = set()
    for resolve in (
        lambda: session_limits(SETTINGS, timeout_s=1000),
        lambda: one_shot_limits(SETTINGS, timeout_s=1000),
        lambda: execution_timeout(SETTINGS, 1000, 30),
        lambda: job_limits(SETTINGS, timeout_s=1000),
    ):
        with pytest.raises(InvalidLimits) as caught:
            resolve()
        answers.add((caught.value.status_code, caught.value.code, caught.value.message))
    assert len(answers) == 1


def test_a_batch_with_one_job_over_the_limit_is_refused_whole_naming_the_job() -> None:
    jobs = [BatchJob(code="1"), BatchJob(code="2", timeout_s=5), BatchJob(code="3", memory_mb=4096)]
    with pytest.raises(InvalidLimits) as caught:
        batch_jobs(SETTINGS, jobs)
    assert caught.value.message.startswith("job 2: memory_mb=4096 is above this server's maximum of 1024")
    assert "EXECBOX_BATCH_MEMORY_MB" in caught.value.message


def test_a_batch_resolves_every_job_in_order() -> None:
    jobs = [BatchJob(code="1"), BatchJob(code="2", timeout_s=5, memory_mb=256, max_output_bytes=2048)]
    resolved = batch_jobs(SETTINGS, jobs)
    assert [r.job for r in resolved] == jobs
    assert [r.limits for r in resolved] == [
        JobLimits(timeout_s=10, memory_mb=1024, max_output_bytes=1_048_576),
        JobLimits(timeout_s=5, memory_mb=256, max_output_bytes=2048),
    ]


@pytest.mark.parametrize(
    ("resolve", "field", "value"),
    [
        (session_limits, "memory_mb", SANDBOX_MEMORY_FLOOR_MB - 1),
        (session_limits, "cpus", 0),
        (session_limits, "timeout_s", 0),
        (session_limits, "max_output_bytes", 1023),
        (job_limits, "memory_mb", JOB_MEMORY_FLOOR_MB - 1),
        (job_limits, "timeout_s", -1),
    ],
)
def test_a_limit_below_its_floor_is_refused_for_adapters_with_looser_models(
    resolve: object, field: str, value: float
) -> None:
    # Our own request models refuse these first (422 invalid_request); a compatibility
    # endpoint translating another API's request gets the policy's answer instead.
    with pytest.raises(InvalidLimits, match=f"{field}={value} is too small"):
        resolve(SETTINGS, **{field: value})  # type: ignore[operator]


def floor(model: type[BaseModel], field: str) -> tuple[float, bool]:
    for rule in model.model_fields[field].metadata:
        if isinstance(rule, annotated_types.Ge):
            return float(rule.ge), True  # type: ignore[arg-type]
        if isinstance(rule, annotated_types.Gt):
            return float(rule.gt), False  # type: ignore[arg-type]
    raise AssertionError(f"{model.__name__}.{field} declares no floor")


@pytest.mark.parametrize("model", [SessionCreate, OneShotRequest])
def test_the_policys_floors_are_the_ones_the_session_models_declare(model: type[BaseModel]) -> None:
    assert floor(model, "memory_mb") == (SANDBOX_MEMORY_FLOOR_MB, True)
    assert floor(model, "cpus") == (0, False)
    assert floor(model, "timeout_s") == (0, False)
    assert floor(model, "max_output_bytes") == (1024, True)


def test_the_policys_floors_are_the_ones_the_batch_job_model_declares() -> None:
    assert floor(BatchJob, "memory_mb") == (JOB_MEMORY_FLOOR_MB, True)
    assert floor(BatchJob, "timeout_s") == (0, False)
    assert floor(BatchJob, "max_output_bytes") == (1024, True)
