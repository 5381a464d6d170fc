"""Typed test values and EvalPlus's judge (clients/python/execbox/_values.py), which the batch
worker's server process runs on what a hostile job returned, and assertion scripts turned into
cases (clients/python/execbox/_assertions.py)."""

from __future__ import annotations

import collections
import json
import math
import time
import tracemalloc
from typing import Any, NamedTuple

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from execbox._assertions import assertions_to_cases
from execbox._models import TestSpec as Spec  # not collected as a test class
from execbox._values import (
    Digest,
    EvalPlusJudge,
    Opaque,
    decode_value,
    digest_encoding,
    digest_value,
    encode_value,
    encoded_size,
)


class Pair(NamedTuple):
    a: int
    b: int


class AlwaysEqual:
    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = object.__hash__


class LyingInt(int):
    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = int.__hash__


def judge(actual: Any, expected: Any, atol: float = 0.0, **kwargs: Any) -> bool:
    """What the worker does: the job's value crosses as JSON text, the expected value is decoded."""
    wire = json.loads(json.dumps(encode_value(actual)))
    trusted = decode_value(json.loads(json.dumps(encode_value(expected))))
    return EvalPlusJudge(atol, np.allclose).judge(wire, trusted, **kwargs)


# ------------------------------------------------------------------ the encoding

VALUES = [
    None,
    True,
    0,
    -(2**20000),
    1.5,
    math.inf,
    -math.inf,
    1 + 2j,
    "ü\ud800",
    b"\x00\xff",
    bytearray(b"ab"),
    [1, (2, 3), {4}],
    (),
    frozenset({(1, 2)}),
    {(1, 2): [3], "a": {1: None}},
    {},
]


@pytest.mark.parametrize("value", VALUES, ids=lambda value: type(value).__name__)
def test_a_value_survives_the_encoding_with_its_type(value: Any) -> None:
    back = decode_value(json.loads(json.dumps(encode_value(value))))
    assert type(back) is type(value)
    assert back == value


def test_nan_survives_as_nan() -> None:
    assert math.isnan(decode_value(json.loads(json.dumps(encode_value(math.nan)))))


def test_subclasses_travel_as_their_base_value_and_other_objects_as_opaques() -> None:
    assert encode_value(Pair(1, 2)) == {"$tuple": [1, 2]}
    assert encode_value(collections.Counter("aab")) == {"$dict": [["a", 2], ["b", 1]]}
    assert encode_value(np.int64(3)) == 3 and type(encode_value(np.float64(2.5))) is float
    assert encode_value(LyingInt(4)) == 4
    opaque = decode_value(encode_value(AlwaysEqual()))
    assert isinstance(opaque, Opaque) and opaque != opaque


def test_a_cyclic_value_is_encoded_without_recursing_forever() -> None:
    cycle: list[Any] = []
    cycle.append(cycle)
    json.dumps(encode_value(cycle))


@pytest.mark.parametrize(
    "data",
    [{"$set": [[1]]}, {"$dict": [[[1], 2]]}, {"$int": "12"}, {"$float": "NaN"}, {"$what": 1}, {"a": 1}, 1e400],
    ids=repr,
)
def test_a_broken_encoding_is_a_value_error(data: Any) -> None:
    with pytest.raises(ValueError):
        decode_value(data)


# ------------------------------------------------------------------ EvalPlus's comparison


@pytest.mark.parametrize(
    ("actual", "expected", "passes"),
    [
        ([1, 2], [1, 2], True),
        ((1, 2), [1, 2], False),  # a tuple is no list
        ([1, 2], (1, 2), False),
        (Pair(1, 2), (1, 2), True),  # EvalPlus's out == exp: a namedtuple equals its tuple
        (True, 1, True),  # Python's ==, as EvalPlus compares
        (1.0, 1, True),
        ({1, 2}, frozenset({1, 2.0}), True),
        ({1: "a"}, collections.OrderedDict({1: "a"}), True),
        ({"1": "a"}, {1: "a"}, False),
        (math.nan, math.nan, False),
        (b"x", bytearray(b"x"), True),
        ("x", b"x", False),
        (None, 0, False),
        (AlwaysEqual(), 1, False),  # its __eq__ never runs
        (LyingInt(4), 5, False),  # compared by value
        ([AlwaysEqual()], [1], False),
    ],
    ids=repr,
)
def test_outputs_are_compared_by_value_as_python_compares_them(actual: Any, expected: Any, passes: bool) -> None:
    assert judge(actual, expected) is passes


def test_a_forged_encoding_of_a_set_with_repeats_is_not_the_expected_set() -> None:
    assert EvalPlusJudge(0, np.allclose).judge({"$set": [1, 1]}, {1, 2}) is False
    assert EvalPlusJudge(0, np.allclose).judge({"$set": [1, 1, 2]}, {1, 2}) is True


def test_a_set_of_colliding_integers_is_compared_in_linear_time() -> None:
    # Every multiple of 2**61 - 1 hashes to 0: a table built from them would take quadratic time.
    colliding = {"$set": [k * (2**61 - 1) for k in range(200_000)]}
    started = time.monotonic()
    assert EvalPlusJudge(0, np.allclose).judge(colliding, {1}) is False
    assert EvalPlusJudge(0, np.allclose).judge(colliding, set(range(200_000))) is False
    assert time.monotonic() - started < 5  # a quadratic set build would take minutes


def test_floats_use_evalplus_tolerance_once_a_float_was_expected() -> None:
    one = EvalPlusJudge(0, np.allclose)
    assert one.judge(encode_value([1.0, 2.0000000001]), [1.0, 2.0])  # atol 0 and floats: 1e-6
    assert one.atol == 1e-6  # and it stays for the later cases, as EvalPlus's loop leaves it
    assert one.judge(encode_value([1.0, 2]), [1.0000001, 2])  # not all floats, but the sticky atol
    assert not EvalPlusJudge(0, np.allclose).judge(encode_value([1.0, 2]), [1.0000001, 2])
    assert not judge((1.0, 2.0), [1.0, 2.0], atol=1e-6)  # the types must be the same
    assert not judge(1.1, 1.0, atol=1e-6)
    assert judge(1.00005, 1.0, atol=1e-4)
    assert not judge(math.nan, math.nan, atol=1e-4)


@pytest.mark.parametrize(
    ("actual", "expected", "kwargs", "passes"),
    [
        ([3, 1, 2], [1, 2, 3], {"oracle": "set_equal"}, True),
        ([3, 1], [1, 2, 3], {"oracle": "set_equal"}, False),
        ("ab", ["b", "a"], {"oracle": "set_equal"}, True),
        (AlwaysEqual(), True, {"oracle": "not_none"}, True),  # a re.Match: only "not None" is checked
        (None, True, {"oracle": "not_none"}, False),
        (False, True, {"oracle": "not_none"}, False),
        ("anything", None, {"oracle": "returns"}, True),
        (1.0, None, {"oracle": "polynomial_root", "inputs": [[-1, 1]]}, True),
        (2.0, None, {"oracle": "polynomial_root", "inputs": [[-1, 1]]}, False),
        ("1", None, {"oracle": "polynomial_root", "inputs": [[-1, 1]]}, False),
        (7, 5, {"alternatives": [0, 7]}, True),
        ([1], True, {"oracle": "truthy"}, True),
        (AlwaysEqual(), True, {"oracle": "truthy"}, False),  # its own __bool__ is not asked
        (0, False, {"oracle": "falsy"}, True),
        (1, True, {"oracle": "is"}, False),
        (True, True, {"oracle": "is"}, True),
    ],
    ids=repr,
)
def test_evalplus_special_oracles(actual: Any, expected: Any, kwargs: dict[str, Any], passes: bool) -> None:
    assert judge(actual, expected, atol=1e-4 if kwargs.get("oracle") == "polynomial_root" else 0, **kwargs) is passes


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.tuples(inner, inner)
            | st.frozensets(st.integers() | st.text(max_size=3), max_size=4)
            | st.dictionaries(st.integers() | st.text(max_size=3), inner, max_size=4)
        ),
        max_leaves=20,
    ),
)
def test_a_value_equals_itself_after_the_trip_as_python_says(value: Any) -> None:
    assert judge(value, decode_value(encode_value(value))) is True


# ------------------------------------------------------------------ assertions as cases


def test_a_humaneval_check_becomes_cases() -> None:
    script = '''
METADATA = {"author": "jt"}

def check(candidate):
    """Docs."""
    assert candidate([1, 2], 3) == (1, 2 * 3), "message"
    assert abs(candidate(2.0) - 2.0/3.0) < 1e-6
    assert not candidate("")
    assert candidate(None) is None
    assert set(candidate([3, 1])) == set([1, 3])
    assert True
'''
    spec = Spec.from_assertions(script, entry_point="f")
    assert spec.semantics == "evalplus" and spec.entry_point == "f" and spec.cases is not None
    first, close, falsy, none, unordered = spec.cases
    assert first.input == [[1, 2], 3] and first.expected == {"$tuple": [1, 6]}
    assert close.atol == 1e-6 and close.expected == pytest.approx(2.0 / 3.0)
    assert falsy.oracle == "falsy" and none.oracle == "is" and unordered.oracle == "set_equal"


@pytest.mark.parametrize(
    "script",
    [
        "def check(candidate):\n    for x in range(3):\n        assert candidate(x) == x\n",
        "assert f(g(1)) == 2\n",
        "assert f(1) > 2\n",
        "assert f(x=1) == 2\n",
        "assert f(2**1000000) == 1\n",
        "x = 1\nassert f(x) == 1\n",
        "",
    ],
)
def test_what_is_not_a_plain_call_with_literals_is_refused_with_the_statement(script: str) -> None:
    with pytest.raises(ValueError):
        assertions_to_cases(script, entry_point="f")


def test_set_equal_counts_a_duplicate_in_the_expected_list_once() -> None:
    # Mbpp/7 (set_equal oracle): the canonical output repeats a word; the same list must pass.
    words = ["a", "long", "b", "long"]
    assert judge(words, words, oracle="set_equal") is True
    assert judge(["long", "b", "a"], words, oracle="set_equal") is True
    assert judge(["a", "b"], words, oracle="set_equal") is False


# ------------------------------------------------------------------ values too big to send: digests


def digest_after_trip(value: Any) -> dict[str, Any]:
    """The digest the worker's server computes of a returned value that arrived as an encoding."""
    return digest_encoding(json.loads(json.dumps(encode_value(value))))


LONG = [
    list(range(3000)),
    [(i, str(i), [i * 0.5]) for i in range(2500)],
    tuple({"k": {i, -i}} for i in range(1500)),
    [[1, [2, [frozenset({"a", "b"})]]]] * 1200,
    [2**20000] * 1100,
    [math.nan, math.inf, 1 + 2j] * 400,
    [Pair(1, 2)] * 1100,
]


@pytest.mark.parametrize("value", VALUES + LONG, ids=lambda value: type(value).__name__)
def test_a_value_digested_in_the_job_has_the_digest_of_its_encoding(value: Any) -> None:
    # The job hashes a big value a slice at a time; the server hashes an encoding that arrived.
    assert digest_value(value) == digest_after_trip(value)
    assert encoded_size(value, 1 << 30) == len(json.dumps(encode_value(value), separators=(",", ":")))


@settings(max_examples=150, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.tuples(inner, inner)
            | st.sets(st.integers() | st.text(max_size=3) | st.floats(allow_nan=False), max_size=6)
            | st.dictionaries(st.integers() | st.text(max_size=3), inner, max_size=4)
        ),
        max_leaves=30,
    ),
)
def test_any_value_digested_whole_or_by_slices_gives_one_digest(value: Any) -> None:
    assert digest_value(value) == digest_after_trip(value)
    assert digest_value([value] * 1100) == digest_after_trip([value] * 1100)


def test_a_digest_does_not_depend_on_the_order_sets_and_dicts_were_built_in() -> None:
    words = [f"w{i}" for i in range(200)]
    assert digest_value(set(words)) == digest_encoding({"$set": list(reversed(encode_value(set(words))["$set"]))})
    assert digest_value(dict.fromkeys(words, 1)) == digest_value(dict.fromkeys(reversed(words), 1))
    assert digest_value(words) != digest_value(list(reversed(words)))  # a list's order is its value


def test_a_digest_says_its_size_and_whether_floats_are_inside() -> None:
    assert digest_value([1, 2]) == {**digest_value([1, 2]), "bytes": 5, "floats": False}
    assert digest_value([1, (2, [0.5])])["floats"] is True
    assert digest_value([1, {"$float": "inf"}])["floats"] is False  # a string key, not a float
    assert digest_value(math.inf)["floats"] is True


def test_the_size_of_a_long_list_is_given_up_on_once_over_the_limit() -> None:
    assert encoded_size(list(range(10**6)), 10_000) is None
    assert encoded_size(list(range(10)), 10_000) == len("[0,1,2,3,4,5,6,7,8,9]")


def test_a_big_value_is_digested_without_encoding_it_whole() -> None:
    rows = [("Dog", "Cat", "CatBird", i) for i in range(200_000)]  # ~8 MB of JSON, ~30 MB encoded
    tracemalloc.start()
    try:
        digest_value(rows)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * 1024 * 1024


@pytest.mark.parametrize(
    "data",
    [
        {"$digest": "sha256:" + "0" * 63, "bytes": 1, "floats": False},
        {"$digest": "md5:" + "0" * 64, "bytes": 1, "floats": False},
        {"$digest": "sha256:" + "0" * 64, "bytes": -1, "floats": False},
        {"$digest": "sha256:" + "0" * 64, "bytes": 1},
        {"$digest": "sha256:" + "0" * 64, "bytes": 1, "floats": 0},
        {"$digest": "sha256:" + "0" * 64, "bytes": 1, "floats": False, "x": 1},
    ],
    ids=repr,
)
def test_a_broken_digest_is_a_value_error(data: Any) -> None:
    with pytest.raises(ValueError):
        decode_value(data)


def judge_digest(actual_wire: Any, value: Any, atol: float = 0.0, **kwargs: Any) -> bool:
    expected = decode_value(json.loads(json.dumps(digest_value(value))))
    assert isinstance(expected, Digest)
    return EvalPlusJudge(atol, np.allclose).judge(json.loads(json.dumps(actual_wire)), expected, **kwargs)


def test_an_expected_digest_is_met_by_the_same_value_sent_whole_or_as_a_digest() -> None:
    value = [(i, f"s{i}") for i in range(2000)]
    assert judge_digest(encode_value(value), value) is True
    assert judge_digest(digest_value(value), value) is True
    assert judge_digest(encode_value(list(reversed(value))), value) is False
    assert judge_digest(digest_value(value[:-1]), value) is False
    assert judge_digest({"$digest": "sha256:" + "0" * 64, "bytes": 1, "floats": False}, value) is False
    assert judge_digest({"$digest": "junk"}, value) is False
    assert judge_digest({"$truncated": 10}, value) is False
    assert judge_digest(encode_value(AlwaysEqual()), value) is False


def test_an_expected_digest_is_compared_exactly_not_as_python_or_numpy_would() -> None:
    # Where a digest differs from EvalPlus: 1 == 1.0 there, and floats within atol pass there.
    assert judge_digest(encode_value([1.0, 2.0]), [1, 2]) is False
    assert judge_digest(encode_value([0.1 + 0.2]), [0.3], atol=1e-6) is False
    assert judge_digest(encode_value([3]), [1], oracle="returns") is True
