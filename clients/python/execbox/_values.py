"""Typed values: Python values JSON cannot carry, as JSON, and EvalPlus's comparison of them.

One module for the SDK (which encodes test inputs and reads actual outputs), the service and the
batch worker: the sandbox image carries this very file beside ``worker_protocol.py``
(``sandbox_images/python/build.sh`` copies it), where the fork server imports it as
``execbox_values``. Hence the standard library only, Python 3.10, and nothing of execbox.

The encoding is JSON with ``$``-tagged objects for what JSON cannot say::

    None, bool, str, list      null, true/false, "...", [...]
    int                        a JSON int; beyond MAX_INT_BITS bits {"$int": "-0x1f"}
    float                      a JSON float (1.0, never 1); {"$float": "inf" | "-inf" | "nan"}
    complex                    {"$complex": [re, im]}
    tuple, set, frozenset      {"$tuple": [...]}, {"$set": [...]}, {"$frozenset": [...]}
    dict (any keys)            {"$dict": [[key, value], ...]}
    bytes, bytearray           {"$bytes": base64}, {"$bytearray": base64}
    anything else              {"$repr": "...", "$type": "module.Name"}: an Opaque, equal to nothing
    a value cut for size       {"$truncated": bytes}: an Opaque too

Subclasses of these (namedtuple, Counter, OrderedDict, IntEnum, numpy.float64) travel as their
base type's value, numpy scalars as their Python value: what EvalPlus's ``out == exp`` compares.

The comparison (:class:`EvalPlusJudge`) is EvalPlus's ``unsafe_execute`` check — Python's ``==``
over the values, its special oracles, its float tolerance — computed from the *encoding* of the
actual value, which comes from a hostile process: no code of that process runs (an object with a
custom ``__eq__`` arrives as an Opaque), and its data is never hashed into a table (a set of
colliding integers cannot make the comparison quadratic).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Callable, Iterable
from typing import Any, Final, Literal, get_args

__all__ = [
    "MAX_DEPTH",
    "ORACLES",
    "EvalPlusJudge",
    "Opaque",
    "Oracle",
    "decode_value",
    "encode_value",
    "truncated",
]

MAX_DEPTH: Final = 100  # nesting of an encoded value (deeper ones are an Opaque, or refused)
MAX_INT_BITS: Final = 13_000  # ~3900 digits: below CPython's int <-> str limit (4300 digits)
MAX_REPR: Final = 1000  # characters of an Opaque's repr
MAX_NESTED_SET: Final = 10_000  # elements of a frozenset inside an actual set's element (hashed)
_HEX = re.compile(r"-?0x[0-9a-f]+\Z")
_FLOATS = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}

Oracle = Literal["set_equal", "not_none", "returns", "polynomial_root", "truthy", "falsy", "is"]
ORACLES: Final[frozenset[str]] = frozenset(get_args(Oracle))


class Opaque:
    """A value the encoding cannot carry (or one cut for size): it equals nothing, itself included."""

    __slots__ = ("repr", "type")

    def __init__(self, type_name: str, text: str) -> None:
        self.type = type_name
        self.repr = text

    def __eq__(self, other: object) -> bool:
        return False

    def __ne__(self, other: object) -> bool:
        return True

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"Opaque({self.type!r}, {self.repr!r})"


def truncated(size: int) -> dict[str, int]:
    """The encoding of a value of ``size`` bytes that was not kept (over an output limit)."""
    return {"$truncated": size}


# ----------------------------------------------------------------------------- encode


def encode_value(value: Any) -> Any:
    """``value`` as typed JSON data (never raises; what cannot be carried becomes an Opaque)."""
    return _encode(value, 0)


def _encode(value: Any, depth: int) -> Any:
    if depth > MAX_DEPTH:
        return {"$repr": "<a value nested too deeply>", "$type": type(value).__name__[:200]}
    kind = type(value)
    try:
        if value is None or kind is str:
            return value
        if kind is bool:
            return value
        if kind is int:
            return _int(value)
        if kind is float:
            return _float(value)
        if kind is list:
            return [_encode(v, depth + 1) for v in value]
        if kind is tuple:
            return {"$tuple": [_encode(v, depth + 1) for v in value]}
        if kind is dict:
            return {"$dict": [[_encode(k, depth + 1), _encode(v, depth + 1)] for k, v in value.items()]}
        if kind is set or kind is frozenset:
            tag = "$set" if kind is set else "$frozenset"
            return {tag: [_encode(v, depth + 1) for v in value]}
        return _encode_other(value, depth)
    except RecursionError:
        return {"$repr": "<a value nested too deeply>", "$type": kind.__name__[:200]}
    except Exception as exc:  # a hostile __iter__ or __repr__: the type still says what it was
        return {"$repr": f"<could not encode: {type(exc).__name__}>", "$type": _type_name(kind)}


def _encode_other(value: Any, depth: int) -> Any:
    # Subclasses of the builtins travel as their base value: EvalPlus's `out == exp` compares
    # a namedtuple equal to a tuple and a Counter equal to a dict.
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return _int(int.__index__(value))
    if isinstance(value, float):
        return _float(float.__float__(value))
    if isinstance(value, complex):
        return {"$complex": [_float(value.real), _float(value.imag)]}
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    if isinstance(value, bytearray):
        return {"$bytearray": base64.b64encode(value).decode("ascii")}
    if isinstance(value, list):
        return [_encode(v, depth + 1) for v in list.__iter__(value)]
    if isinstance(value, tuple):
        return {"$tuple": [_encode(v, depth + 1) for v in tuple.__iter__(value)]}
    if isinstance(value, dict):
        return {"$dict": [[_encode(k, depth + 1), _encode(v, depth + 1)] for k, v in dict.items(value)]}
    if isinstance(value, set | frozenset):
        tag = "$set" if isinstance(value, set) else "$frozenset"
        return {tag: [_encode(v, depth + 1) for v in value]}
    if type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "shape", None) == ():
        return _encode(value.item(), depth + 1)  # numpy scalars: their Python values
    try:
        text = repr(value)[:MAX_REPR]
    except Exception:
        text = "<repr() failed>"
    return {"$repr": text, "$type": _type_name(type(value))}


def _type_name(kind: type) -> str:
    try:
        return f"{kind.__module__}.{kind.__qualname__}"[:200]
    except Exception:
        return "?"


def _int(value: int) -> Any:
    return value if value.bit_length() <= MAX_INT_BITS else {"$int": hex(value)}


def _float(value: float) -> Any:
    if math.isfinite(value):
        return value
    return {"$float": "nan" if math.isnan(value) else "inf" if value > 0 else "-inf"}


# ----------------------------------------------------------------------------- decode


def decode_value(data: Any) -> Any:
    """The Python value of typed JSON data (trusted data: sets and dicts are built).

    Raises:
        ValueError: ``data`` is not an encoding (an unknown tag, a wrong shape, too deep, an
            unhashable set element or dict key).
    """
    try:
        return _decode(data, 0, hashing=True)
    except RecursionError as exc:
        raise ValueError("a value nested too deeply") from exc
    except TypeError as exc:  # an unhashable element of a set, key of a dict
        raise ValueError(f"not a typed value: {exc}") from exc


class _Bad(ValueError):
    pass


def _decode(data: Any, depth: int, *, hashing: bool) -> Any:
    if depth > MAX_DEPTH:
        raise _Bad("a value nested too deeply")
    kind = type(data)
    if data is None or kind in (bool, int, float, str):
        if kind is float and not math.isfinite(data):
            raise _Bad("a non-finite float outside {'$float': ...}")
        return data
    if kind is list:
        return [_decode(v, depth + 1, hashing=hashing) for v in data]
    if kind is not dict:
        raise _Bad(f"not a typed value: a {kind.__name__}")
    tag, body = _tag(data)
    if tag in ("$int", "$float", "$complex", "$bytes", "$bytearray"):
        return _scalar(tag, body)
    if tag == "$repr":
        return Opaque(str(data.get("$type", "?"))[:200], body if type(body) is str else "?")
    if tag == "$truncated":
        return Opaque("truncated", f"<a value of {body} bytes, not kept>")
    items = _items(body)
    if tag == "$tuple":
        return tuple(_decode(v, depth + 1, hashing=hashing) for v in items)
    if not hashing:  # a hostile value: never hashed into a table (only compared, see the judge)
        return Opaque(tag[1:], "<not built>")
    if tag in ("$set", "$frozenset"):
        values = [_decode(v, depth + 1, hashing=True) for v in items]
        return set(values) if tag == "$set" else frozenset(values)
    if tag == "$dict":
        return {k: v for k, v in (_pair(p, depth, hashing=True) for p in items)}
    raise _Bad(f"unknown tag {tag[:30]!r}")


def _tag(data: dict[str, Any]) -> tuple[str, Any]:
    if "$repr" in data and len(data) == 2 and "$type" in data:
        return "$repr", data["$repr"]
    if len(data) != 1:
        raise _Bad("a tagged value must have exactly one tag")
    ((tag, body),) = data.items()
    return tag, body


def _items(body: Any) -> list[Any]:
    if type(body) is not list:
        raise _Bad("a tagged collection's body is not a list")
    return body


def _pair(raw: Any, depth: int, *, hashing: bool) -> tuple[Any, Any]:
    if type(raw) is not list or len(raw) != 2:
        raise _Bad("a dict item is not a [key, value] pair")
    return _decode(raw[0], depth + 1, hashing=hashing), _decode(raw[1], depth + 1, hashing=hashing)


def _scalar(tag: str, body: Any) -> Any:
    if tag == "$int":
        if type(body) is not str or not _HEX.match(body):
            raise _Bad("$int is not a hex string")
        return int(body, 16)
    if tag == "$float":
        if body not in _FLOATS:
            raise _Bad("$float is not inf, -inf or nan")
        return _FLOATS[body]
    if tag == "$complex":
        if type(body) is not list or len(body) != 2:
            raise _Bad("$complex is not [re, im]")
        re_, im = (_decode(part, 0, hashing=False) for part in body)
        if type(re_) not in (int, float) or type(im) not in (int, float):
            raise _Bad("$complex parts are not numbers")
        return complex(re_, im)
    if type(body) is not str:
        raise _Bad(f"{tag} is not base64 text")
    try:
        raw = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _Bad(f"{tag} is not base64") from exc
    return raw if tag == "$bytes" else bytearray(raw)


# ----------------------------------------------------------------------------- compare


_NOT = object()  # "the encoding is not of this kind"


class _Unequal(Exception):
    """The encoding cannot denote a value equal to the expected one (or is no valid encoding)."""


def _number(enc: Any) -> Any:
    kind = type(enc)
    if kind in (bool, int, float):
        return enc
    if kind is dict and len(enc) == 1:
        tag = next(iter(enc))
        if tag in ("$int", "$float", "$complex"):
            try:
                return _scalar(tag, enc[tag])
            except _Bad:
                return _NOT
    return _NOT


def _collection(enc: Any, *tags: str) -> list[Any] | None:
    """The items of a tagged collection with one of ``tags`` (``[]`` means a JSON array)."""
    if type(enc) is list:
        return enc if "[]" in tags else None
    if type(enc) is dict and len(enc) == 1:
        tag, body = next(iter(enc.items()))
        if tag in tags and type(body) is list:
            return body
    return None


def _key(enc: Any, depth: int) -> Any:
    """The hashable value an element of an actual set (or key of a dict) denotes.

    Hashing one value is fine; what must never happen is building a table from hostile values,
    so a frozenset inside an element is bounded.
    """
    if depth > MAX_DEPTH:
        raise _Unequal
    kind = type(enc)
    if enc is None or kind in (bool, int, float, str):
        return enc
    if kind is not dict or len(enc) != 1:
        raise _Unequal  # a list (unhashable), a dict, an Opaque, a broken encoding
    tag, body = next(iter(enc.items()))
    if tag in ("$int", "$float", "$complex", "$bytes"):
        try:
            return _scalar(tag, body)
        except _Bad as exc:
            raise _Unequal from exc
    if tag == "$tuple" and type(body) is list:
        return tuple(_key(v, depth + 1) for v in body)
    if tag == "$frozenset" and type(body) is list and len(body) <= MAX_NESTED_SET:
        return frozenset(_key(v, depth + 1) for v in body)
    raise _Unequal


def _equal(enc: Any, exp: Any, depth: int = 0) -> bool:
    """Whether the value ``enc`` encodes ``== exp`` in Python (``exp`` a decoded, trusted value)."""
    if depth > MAX_DEPTH:
        return False
    kind = type(exp)
    if exp is None:
        return enc is None
    if kind in (bool, int, float, complex):
        number = _number(enc)
        return number is not _NOT and bool(number == exp)
    if kind is str:
        return type(enc) is str and enc == exp
    if kind in (bytes, bytearray):
        if type(enc) is not dict or len(enc) != 1 or next(iter(enc)) not in ("$bytes", "$bytearray"):
            return False
        try:
            return bool(_scalar(*next(iter(enc.items()))) == exp)
        except _Bad:
            return False
    if kind is list or kind is tuple:
        items = _collection(enc, "[]" if kind is list else "$tuple")
        if items is None or len(items) != len(exp):
            return False
        return all(_equal(a, e, depth + 1) for a, e in zip(items, exp, strict=True))
    if kind is set or kind is frozenset:
        items = _collection(enc, "$set", "$frozenset")
        return items is not None and _same_set(items, exp, depth)
    if kind is dict:
        items = _collection(enc, "$dict")
        return items is not None and _same_dict(items, exp, depth)
    return False  # an Opaque expected value equals nothing


def _same_set(items: Iterable[Any], exp: Iterable[Any], depth: int) -> bool:
    """set(items) == set(exp), with only ``exp``'s (trusted) values hashed into a table."""
    index: dict[Any, int] = {}
    for value in exp:  # the distinct values, numbered: a duplicate is one element of the set
        index.setdefault(value, len(index))
    hit = bytearray(len(index))
    try:
        for item in items:
            i = index.get(_key(item, depth + 1))
            if i is None:
                return False
            hit[i] = 1
    except _Unequal:
        return False
    return all(hit)


def _same_dict(items: list[Any], exp: dict[Any, Any], depth: int) -> bool:
    keys = list(exp)
    index = {key: i for i, key in enumerate(keys)}
    last: dict[int, Any] = {}  # dict(pairs): a later equal key replaces the value
    try:
        for pair in items:
            if type(pair) is not list or len(pair) != 2:
                return False
            i = index.get(_key(pair[0], depth + 1))
            if i is None:
                return False
            last[i] = pair[1]
    except _Unequal:
        return False
    return len(last) == len(keys) and all(_equal(last[i], exp[keys[i]], depth + 1) for i in range(len(keys)))


def _elements(enc: Any) -> list[Any] | None:
    """What ``set(out)`` iterates over, as encodings: None if ``out`` is not iterable that way."""
    items = _collection(enc, "[]", "$tuple", "$set", "$frozenset")
    if items is not None:
        return items
    if type(enc) is str:
        return list(enc)
    pairs = _collection(enc, "$dict")
    if pairs is not None:
        return [p[0] if type(p) is list and len(p) == 2 else {"$bad": None} for p in pairs]
    if type(enc) is dict and len(enc) == 1 and next(iter(enc)) in ("$bytes", "$bytearray"):
        try:
            return list(_scalar(*next(iter(enc.items()))))
        except _Bad:
            return None
    return None


def _truth(enc: Any) -> bool | None:
    """bool() of the value ``enc`` encodes; None for an Opaque (its own __bool__ is not asked)."""
    if enc is None or type(enc) in (bool, int, float, str, list):
        return bool(enc)
    number = _number(enc)
    if number is not _NOT:
        return bool(number)
    if type(enc) is dict and len(enc) == 1:
        tag, body = next(iter(enc.items()))
        if tag in ("$tuple", "$set", "$frozenset", "$dict") and type(body) is list:
            return bool(body)
        if tag in ("$bytes", "$bytearray") and type(body) is str:
            return bool(body)
    return None


def _is_floats(x: Any) -> bool:
    # EvalPlus's is_floats: a float, or a non-empty list/tuple of floats.
    if isinstance(x, float):
        return True
    if isinstance(x, list | tuple) and x:
        return all(isinstance(i, float) for i in x)
    return False


def _poly(xs: list[Any], x: Any) -> Any:
    # EvalPlus's oracle of HumanEval/32: the polynomial with coefficients xs at x.
    return sum(coeff * math.pow(x, i) for i, coeff in enumerate(xs))


AllClose = Callable[..., Any]


class EvalPlusJudge:
    """EvalPlus's check of one job's cases, in order (``unsafe_execute``), on encoded outputs.

    ``allclose`` is ``numpy.allclose`` (passed in: this module is the standard library only).
    One judge per job: EvalPlus's ``atol`` becomes 1e-6 for good once a float output was
    expected (its loop assigns the variable), so cases must be judged in index order.
    """

    def __init__(self, atol: float, allclose: AllClose) -> None:
        self.atol = atol
        self.allclose = allclose

    def judge(
        self,
        actual: Any,
        expected: Any,
        *,
        inputs: Any = None,
        oracle: str | None = None,
        alternatives: Iterable[Any] = (),
    ) -> bool:
        """Whether the returned value (encoded: ``actual``) passes; ``expected`` etc. decoded."""
        try:
            return self._judge(actual, expected, inputs, oracle, alternatives)
        except Exception:  # EvalPlus: any exception in the check fails the input
            return False

    def _judge(self, out: Any, exp: Any, inputs: Any, oracle: str | None, alternatives: Iterable[Any]) -> bool:
        if oracle == "polynomial_root":
            x = _number(out)
            if x is _NOT or type(x) is complex:
                return False
            if type(inputs) is not list or len(inputs) != 1:
                return False  # EvalPlus calls _poly(*inp, out): one argument, the coefficients
            return bool(abs(_poly(inputs[0], x)) <= self.atol)
        if oracle == "truthy" or oracle == "falsy":
            return _truth(out) is (oracle == "truthy")
        if oracle == "is":
            return exp in (None, True, False) and out is exp
        exact = oracle == "returns" or _equal(out, exp)
        if oracle == "set_equal":
            elements, expected = _elements(out), list(exp)
            exact = elements is not None and _same_set(elements, expected, 0)
        elif oracle == "not_none":
            exact = out == exp if type(out) is bool else exp == (out is not None)
        exact = exact or any(_equal(out, alt) for alt in alternatives)
        if self.atol == 0 and _is_floats(exp):
            self.atol = 1e-6  # EvalPlus: "enforce atol for float comparison", from here on
        if exact or self.atol == 0:
            return bool(exact)
        return self._close(out, exp)

    def _close(self, enc: Any, exp: Any) -> bool:
        # EvalPlus: assert type(out) == type(exp); same len for a list or tuple;
        # assert np.allclose(out, exp, rtol=1e-07, atol=atol).
        try:
            out = _decode(enc, 0, hashing=False)
        except (_Bad, RecursionError, TypeError):
            return False
        if type(out) is not type(exp):
            return False
        if isinstance(exp, list | tuple) and len(out) != len(exp):
            return False
        return bool(self.allclose(out, exp, rtol=1e-07, atol=self.atol))
