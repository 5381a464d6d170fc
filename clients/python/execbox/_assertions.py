"""Assertion scripts as test cases, so the worker judges them outside the solution's process.

An assertion script (HumanEval's ``check(candidate)``, MBPP's ``assert f(...) == ...`` lines)
runs inside the solution's process, where the solution can forge its outcome. Most of these
scripts are a list of calls with literal arguments and literal expected values: those become
cases with ``semantics="evalplus"`` (typed values, Python's ``==`` by value), judged by the
worker against values the solution never sees. A script with anything else (loops, helper
variables, computed arguments) is refused with the statement that could not be converted.
"""

from __future__ import annotations

import ast
from typing import Any

from execbox._values import encode_value

__all__ = ["assertions_to_cases"]

_CHECK_ARG = "candidate"
_TOLERANCE_OPS = (ast.Lt, ast.LtE)


class _Unsupported(ValueError):
    pass


def assertions_to_cases(script: str, *, entry_point: str) -> list[dict[str, Any]]:
    """The cases (``TestCase`` fields, typed values) an assertion script checks.

    ``abs(f(x) - v) < t`` and ``math.isclose(f(x), v, rel_tol=r)`` give the case its own ``atol``
    (``t``, ``r * |v|``); every other case is exact (EvalPlus's atol 0).

    Raises:
        ValueError: the script does not parse, checks nothing, or has a statement that is not one
            of the understood forms (the message quotes it).
    """
    try:
        tree = ast.parse(script)
    except SyntaxError as exc:
        raise ValueError(f"the assertions do not parse: {exc}") from exc
    names = {entry_point}
    statements: list[ast.stmt] = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "check":
            if len(node.args.args) != 1 or node.decorator_list:
                raise _unsupported(script, node, "check() must take one argument")
            names.add(node.args.args[0].arg)
            statements.extend(node.body)
        elif _ignorable(node, top=True):
            continue
        else:
            statements.append(node)
    cases: list[dict[str, Any]] = []
    for node in statements:
        if _ignorable(node, top=False):
            continue
        if not isinstance(node, ast.Assert):
            raise _unsupported(script, node, "not an assert")
        try:
            case, tolerance = _case(node.test, names)
        except _Unsupported as exc:
            raise _unsupported(script, node, str(exc)) from None
        cases.append(case if tolerance is None else {**case, "atol": tolerance})
    if not cases:
        raise ValueError("the assertions check no call of the entry point")
    return cases


def _unsupported(script: str, node: ast.AST, why: str) -> ValueError:
    text = ast.get_source_segment(script, node) or ast.dump(node)
    return ValueError(f"cannot turn into a case ({why}): {text[:200]}")


def _ignorable(node: ast.stmt, *, top: bool) -> bool:
    """Docstrings, pass, ``assert True``, imports and (at the top) ``METADATA = {...}``."""
    if isinstance(node, ast.Pass | ast.Import | ast.ImportFrom):
        return True
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant | ast.Name):
        return True  # a docstring, a bare `print`: no effect
    if isinstance(node, ast.Assert) and isinstance(node.test, ast.Constant) and node.test.value is True:
        return True
    if top and isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets):
        return all(t.id.isupper() for t in node.targets if isinstance(t, ast.Name))  # METADATA-style constants
    return False


def _case(test: ast.expr, names: set[str]) -> tuple[dict[str, Any], float | None]:
    """One assert's test as a case, and the tolerance it asks for (None: exact)."""
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        return {"input": _call(test.operand, names), "oracle": "falsy"}, None
    if isinstance(test, ast.Call) and _is_call_of(test, names):
        return {"input": _call(test, names), "oracle": "truthy"}, None
    if isinstance(test, ast.Call) and _dotted(test.func) in ("math.isclose", "isclose"):
        return _isclose(test, names)
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1):
        raise _Unsupported("not a comparison of one call")
    left, op, right = test.left, test.ops[0], test.comparators[0]
    if isinstance(op, ast.Is):
        value = _literal(right)
        if value not in (None, True, False) or type(value) not in (type(None), bool):
            raise _Unsupported("`is` with something other than None, True or False")
        return {"input": _call(left, names), "expected": encode_value(value), "oracle": "is"}, None
    if isinstance(op, _TOLERANCE_OPS):
        return _abs_tolerance(left, right, names)
    if not isinstance(op, ast.Eq):
        raise _Unsupported("a comparison other than ==, is, or abs(...) < tolerance")
    if not _has_call(left, names):
        left, right = right, left
    if isinstance(left, ast.Call) and _dotted(left.func) == "set" and len(left.args) == 1 and not left.keywords:
        expected = _literal(right.args[0]) if _is_set_call(right) else _literal(right)  # type: ignore[attr-defined]
        return {"input": _call(left.args[0], names), "expected": encode_value(expected), "oracle": "set_equal"}, None
    return {"input": _call(left, names), "expected": encode_value(_literal(right))}, None


def _is_set_call(node: ast.expr) -> bool:
    return isinstance(node, ast.Call) and _dotted(node.func) == "set" and len(node.args) == 1 and not node.keywords


def _abs_tolerance(left: ast.expr, right: ast.expr, names: set[str]) -> tuple[dict[str, Any], float]:
    # abs(f(args) - expected) < t, or abs(expected - f(args)) < t
    if not (isinstance(left, ast.Call) and _dotted(left.func) == "abs" and len(left.args) == 1):
        raise _Unsupported("a < comparison that is not abs(call - value) < tolerance")
    diff = left.args[0]
    if not (isinstance(diff, ast.BinOp) and isinstance(diff.op, ast.Sub)):
        raise _Unsupported("abs() of something other than a difference")
    call, value = (diff.left, diff.right) if _has_call(diff.left, names) else (diff.right, diff.left)
    tolerance = _literal(right)
    if type(tolerance) not in (int, float) or tolerance < 0:
        raise _Unsupported("a tolerance that is not a number")
    return {"input": _call(call, names), "expected": encode_value(_literal(value))}, float(tolerance)


def _isclose(test: ast.Call, names: set[str]) -> tuple[dict[str, Any], float]:
    if len(test.args) != 2:
        raise _Unsupported("isclose() without two arguments")
    call, value = test.args if _has_call(test.args[0], names) else reversed(test.args)
    keywords = {k.arg: _literal(k.value) for k in test.keywords}
    if set(keywords) - {"rel_tol", "abs_tol"}:
        raise _Unsupported("isclose() with other options than rel_tol and abs_tol")
    expected = _literal(value)
    if type(expected) not in (int, float):
        raise _Unsupported("isclose() with a value that is not a number")
    # EvalPlus's tolerance is absolute (plus numpy's rtol=1e-7): rel_tol becomes the absolute
    # tolerance it means at this value (math.isclose's default rel_tol is 1e-9).
    rel, absolute = float(keywords.get("rel_tol", 1e-9)), float(keywords.get("abs_tol", 0.0))
    return {"input": _call(call, names), "expected": encode_value(expected)}, max(rel * abs(expected), absolute)


def _has_call(node: ast.expr, names: set[str]) -> bool:
    return any(isinstance(n, ast.Call) and _is_call_of(n, names) for n in ast.walk(node))


def _is_call_of(node: ast.Call, names: set[str]) -> bool:
    return isinstance(node.func, ast.Name) and node.func.id in names


def _call(node: ast.expr, names: set[str]) -> Any:
    """The encoded argument list of ``candidate(literal, ...)``."""
    if not (isinstance(node, ast.Call) and _is_call_of(node, names)):
        raise _Unsupported("not a call of the entry point")
    if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
        raise _Unsupported("keyword or starred arguments")
    return encode_value([_literal(arg) for arg in node.args])


def _literal(node: ast.expr) -> Any:
    """A literal, folded arithmetic on literals (``2.0/3.0``, ``3 * 19``), or tuple()/set()/... of one."""
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        pass
    if isinstance(node, ast.BinOp) and type(node.op) in _FOLD:
        left, right = _literal(node.left), _literal(node.right)
        if type(left) in _NUMBERS and type(right) in _NUMBERS and _small(left) and _small(right):
            try:
                return _FOLD[type(node.op)](left, right)
            except ArithmeticError as exc:
                raise _Unsupported("arithmetic that fails") from exc
        if type(left) is type(right) and type(left) in (str, list, tuple) and isinstance(node.op, ast.Add):
            return left + right
        raise _Unsupported("arithmetic on values other than numbers")
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        items = [_literal(item) for item in node.elts]
        return tuple(items) if isinstance(node, ast.Tuple) else items if isinstance(node, ast.List) else set(items)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _literal(node.operand)
        if type(value) in _NUMBERS:
            return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.Call) and not node.keywords and len(node.args) <= 1:
        build = _BUILDERS.get(_dotted(node.func))
        if build is not None:
            try:
                return build(*(_literal(a) for a in node.args))
            except (TypeError, ValueError) as exc:
                raise _Unsupported(f"{_dotted(node.func)}() of something it does not take") from exc
    raise _Unsupported("an argument or expected value that is not a literal")


_NUMBERS = (int, float)
_FOLD: dict[type, Any] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: a // b,
    ast.Mod: lambda a, b: a % b,
    ast.Pow: lambda a, b: a**b if abs(b) <= 64 else _too_big(),
}


def _too_big() -> Any:
    raise _Unsupported("a power too large to fold")
_BUILDERS: dict[str, Any] = {
    "set": set,
    "frozenset": frozenset,
    "tuple": tuple,
    "list": list,
    "float": float,  # float('inf'), float('nan')
}


def _small(value: Any) -> bool:
    # Folding is for a test's own arithmetic: 3 * 19, 2.0 / 3.0 -- never a huge computation.
    return type(value) is float or abs(value) < 2**64


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""
