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
    a value too big to send    {"$digest": "sha256:<hex>", "bytes": n, "floats": bool}: a Digest

A value whose encoding is bigger than a record may be (``MAX_VALUE_BYTES``, under the worker's
8 MiB record cap) does not travel: its :func:`digest_value` does — the SHA-256 of its canonical
encoding (compact JSON, the items of sets and dicts sorted by their own canonical text, so the
digest does not depend on hash order). Two digests are equal exactly when the encodings are:
exact equality, where EvalPlus's ``==`` would also take ``1 == 1.0`` and a float tolerance
(``floats`` says whether the value holds any float, so a caller can tell when that matters).

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
import hashlib
import itertools
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final, Literal, get_args

__all__ = [
    "MAX_DEPTH",
    "MAX_VALUE_BYTES",
    "ORACLES",
    "Digest",
    "EvalPlusJudge",
    "Opaque",
    "Oracle",
    "decode_value",
    "digest_encoding",
    "digest_value",
    "encode_allowance_s",
    "encode_value",
    "encoded_size",
    "expected_size",
    "truncated",
]

MAX_DEPTH: Final = 100  # nesting of an encoded value (deeper ones are an Opaque, or refused)
MAX_INT_BITS: Final = 13_000  # ~3900 digits: below CPython's int <-> str limit (4300 digits)
MAX_REPR: Final = 1000  # characters of an Opaque's repr
MAX_NESTED_SET: Final = 10_000  # elements of a frozenset inside an actual set's element (hashed)
# The largest encoding (compact JSON) a returned value travels as; a bigger one travels as its
# digest. Under the fork server's 8 MiB record cap, with room for the record around the value.
MAX_VALUE_BYTES: Final = 8 * 1024 * 1024 - 64 * 1024
_HEX = re.compile(r"-?0x[0-9a-f]+\Z")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}\Z")
_COMPACT: Final = (",", ":")
# Lists and tuples at least this long are encoded and hashed a slice at a time (never whole).
_STREAM_MIN = 1024
_STREAM_SLICE = 512
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


class Digest:
    """A value known by its digest only (:func:`digest_value`): equal to a Digest of the same hash.

    ``size``: bytes of the canonical encoding; ``floats``: whether the value holds a float (or a
    complex), where a digest cannot apply a tolerance.
    """

    __slots__ = ("floats", "sha256", "size")

    def __init__(self, sha256: str, size: int, floats: bool) -> None:
        self.sha256 = sha256
        self.size = size
        self.floats = floats

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Digest) and other.sha256 == self.sha256

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash(self.sha256)

    def __repr__(self) -> str:
        return f"Digest({self.sha256!r}, {self.size}, floats={self.floats})"

    def encode(self) -> dict[str, Any]:
        return {"$digest": self.sha256, "bytes": self.size, "floats": self.floats}


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
            plain = _plain(value) if len(value) >= _PLAIN_MIN else None
            return plain if plain is not None else [_encode(v, depth + 1) for v in value]
        if kind is tuple:
            plain = _plain(value) if len(value) >= _PLAIN_MIN else None
            return {"$tuple": plain if plain is not None else [_encode(v, depth + 1) for v in value]}
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


_PLAIN: Final = frozenset({str, bool, type(None)})
_PLAIN_MIN: Final = 32  # shorter lists gain nothing from the check


def _plain(items: list[Any] | tuple[Any, ...]) -> list[Any] | None:
    """``items`` as a list when every item encodes as itself (str, bool, None, small int, finite
    float), checked at C speed: a million-item output is not walked in Python; else None."""
    kinds = set(map(type, items))
    if not kinds <= _PLAIN | {int, float}:
        return None
    if int in kinds:
        ints = [v for v in items if type(v) is int] if len(kinds) > 1 else items
        if max(ints).bit_length() > MAX_INT_BITS or min(ints).bit_length() > MAX_INT_BITS:
            return None
    if float in kinds:
        floats = [v for v in items if type(v) is float] if len(kinds) > 1 else items
        if not all(map(math.isfinite, floats)):
            return None
    return list(items)


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


# ----------------------------------------------------------------------------- size and digest


# Encoding a returned value, sending it and reading it back takes time after the call, outside its
# time limit (EvalPlus compares after its alarm too). The worker's clock grants a case this much
# more, from the size of the *expected* value (the requester's word, not the job's): a value sent
# whole is encoded, written and parsed (~1 MB/s on a crowded machine), a bigger one only hashed.
ENCODE_S_PER_BYTE: Final = 1e-6
DIGEST_S_PER_BYTE: Final = 2e-7


def encode_allowance_s(size: int) -> float:
    """Seconds to encode (or hash) and hand over a returned value whose encoding has ``size`` bytes
    (generous: a backstop for a job that ignores its alarm, on a machine other work may crowd)."""
    if size <= 256 * 1024:
        return 0.0  # within the case's grace
    whole = min(size, MAX_VALUE_BYTES)
    return 2.0 + whole * ENCODE_S_PER_BYTE + (size - whole) * DIGEST_S_PER_BYTE


def expected_size(expected: Any) -> int:
    """Bytes of an expected value's encoding: a digest says it, any other is measured."""
    if type(expected) is dict and "$digest" in expected:
        size = expected.get("bytes")
        return size if type(size) is int and size > 0 else 0
    try:
        return len(json.dumps(expected, separators=_COMPACT))
    except (TypeError, ValueError, RecursionError):
        return 0


def encoded_size(value: Any, limit: int) -> int | None:
    """Bytes of ``value``'s encoding as compact JSON, or None once it is over ``limit`` (a long
    list or tuple is encoded a slice at a time, and given up on as soon as it is too big)."""
    size = 0
    for chunk in _chunks(value, 0, canonical=False):
        size += len(chunk)
        if size > limit:
            return None
    return size


def digest_value(value: Any) -> dict[str, Any]:
    """The digest of ``value``'s canonical encoding: ``{"$digest": "sha256:...", "bytes": n,
    "floats": bool}``. A long list or tuple is encoded and hashed a slice at a time, so memory
    stays within a slice's encoding beside the value itself."""
    digest = hashlib.sha256()
    size = 0
    floats = [False]
    for chunk in _chunks(value, 0, canonical=True, floats=floats):
        data = chunk.encode("ascii")
        digest.update(data)
        size += len(data)
    return Digest(f"sha256:{digest.hexdigest()}", size, floats[0]).encode()


def digest_encoding(data: Any) -> dict[str, Any]:
    """:func:`digest_value` of the value ``data`` encodes, from the encoding itself (a returned
    value that did arrive, compared with an expected value that is a digest)."""
    canonical, floats = _canonical(data, 0)
    text = json.dumps(canonical, separators=_COMPACT).encode("ascii")
    return Digest(f"sha256:{hashlib.sha256(text).hexdigest()}", len(text), floats).encode()


def _chunks(value: Any, depth: int, *, canonical: bool, floats: list[bool] | None = None) -> Iterator[str]:
    """The compact JSON text of ``encode_value(value)`` (canonical: of its canonical form), in pieces."""
    if depth <= MAX_DEPTH and isinstance(value, list | tuple) and _length(value) >= _STREAM_MIN:
        # What _encode makes of a list or tuple (or a subclass), one slice at a time.
        items = list.__iter__(value) if isinstance(value, list) else tuple.__iter__(value)
        yield "[" if isinstance(value, list) else '{"$tuple":['
        first = True
        while True:
            part = list(itertools.islice(items, _STREAM_SLICE))
            if not part:
                break
            plain = _plain(part)
            encoded = plain if plain is not None else [_encode(item, depth + 1) for item in part]
            if canonical:
                encoded, has = _canonical(encoded, depth)
                if floats is not None and has:
                    floats[0] = True
            text = json.dumps(encoded, separators=_COMPACT)[1:-1]
            yield text if first else "," + text
            first = False
        yield "]" if isinstance(value, list) else "]}"
        return
    encoded = _encode(value, depth)
    if canonical:
        encoded, has = _canonical(encoded, depth)
        if floats is not None and has:
            floats[0] = True
    yield json.dumps(encoded, separators=_COMPACT)


def _length(value: list[Any] | tuple[Any, ...]) -> int:
    return list.__len__(value) if isinstance(value, list) else tuple.__len__(value)


_SCALAR_KINDS: Final = frozenset({str, bool, int, type(None)})


def _canonical(enc: Any, depth: int) -> tuple[Any, bool]:
    """An encoding with the items of sets and dicts in a fixed order (by their canonical text),
    and whether it holds a float. Equal canonical encodings: equal encoded values, whatever the
    hash order they were iterated in."""
    if depth > MAX_DEPTH + 2:
        return enc, False
    kind = type(enc)
    if kind is float:
        return enc, True
    if kind is list:
        kinds = set(map(type, enc))
        if kinds <= _SCALAR_KINDS:
            return enc, False
        if kinds <= _SCALAR_KINDS | {float}:
            return enc, True
        parts = [_canonical(v, depth + 1) for v in enc]
        return [p for p, _ in parts], any(f for _, f in parts)
    if kind is not dict or len(enc) != 1:
        return enc, False  # a scalar, an Opaque ($repr), or no valid encoding: as it is
    tag, body = next(iter(enc.items()))
    if tag in ("$float", "$complex"):
        return enc, True
    if type(body) is not list or tag not in ("$tuple", "$set", "$frozenset", "$dict"):
        return enc, False
    items, has = _canonical(body, depth + 1)
    if tag in ("$set", "$frozenset"):
        items = sorted(items, key=_text)
    elif tag == "$dict":
        items = sorted(items, key=lambda pair: _text(pair[0]) if type(pair) is list and pair else "")
    return {tag: items}, has


def _text(enc: Any) -> str:
    return json.dumps(enc, separators=_COMPACT)


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
        if set(map(type, data)) <= _SCALAR_KINDS:
            return list(data)  # a long list of numbers or strings, at C speed
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
    if tag == "$digest":
        return _digest(data)
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
    if "$digest" in data:
        return "$digest", data["$digest"]
    if len(data) != 1:
        raise _Bad("a tagged value must have exactly one tag")
    ((tag, body),) = data.items()
    return tag, body


def _digest(data: dict[str, Any]) -> Digest:
    sha, size, floats = data.get("$digest"), data.get("bytes"), data.get("floats")
    if (
        set(data) != {"$digest", "bytes", "floats"}
        or type(sha) is not str
        or not _DIGEST.match(sha)
        or type(size) is not int
        or size < 0
        or type(floats) is not bool
    ):
        raise _Bad('$digest is not {"$digest": "sha256:<64 hex>", "bytes": n, "floats": bool}')
    return Digest(sha, size, floats)


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
        if set(map(type, items)) <= _SCALAR_KINDS and set(map(type, exp)) <= _SCALAR_KINDS:
            # Strings, ints, bools and None: Python's == item by item is what _equal computes.
            return list(items) == list(exp)
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


def _same_digest(enc: Any, exp: Digest) -> bool:
    """Whether the returned value (encoded, or as the job's digest of it) has ``exp``'s digest."""
    if type(enc) is dict and "$digest" in enc:
        try:
            return _digest(enc) == exp
        except _Bad:
            return False
    if type(enc) is dict and "$truncated" in enc:
        return False
    return bool(digest_encoding(enc)["$digest"] == exp.sha256)


def _matches(enc: Any, exp: Any) -> bool:
    return _same_digest(enc, exp) if isinstance(exp, Digest) else _equal(enc, exp)


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
        if isinstance(exp, Digest):
            # An expected value too big to send: its encoding's digest, compared exactly (no
            # oracle, no tolerance can be applied to a hash; ``exp.floats`` says where that matters).
            return oracle == "returns" or _same_digest(out, exp) or any(_matches(out, alt) for alt in alternatives)
        exact = oracle == "returns" or _equal(out, exp)
        if oracle == "set_equal":
            elements, expected = _elements(out), list(exp)
            exact = elements is not None and _same_set(elements, expected, 0)
        elif oracle == "not_none":
            exact = out == exp if type(out) is bool else exp == (out is not None)
        exact = exact or any(_matches(out, alt) for alt in alternatives)
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
