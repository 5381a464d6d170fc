"""The HTML report of an EvalPlus evaluation: one self-contained page (no scripts, fonts or images
fetched from anywhere), readable offline and safe to open although it quotes model-written code
and sandbox output (everything is escaped; the page runs no script at all)."""

from __future__ import annotations

import html
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

from execbox.evals.plus import PlusReport, PlusSample, SuiteResult

__all__ = ["render_html", "write_html"]

_TITLES = {"humaneval": "HumanEval", "mbpp": "MBPP"}
_SHOWN_INPUT = 160  # characters of a failing input shown in the table


@dataclass(frozen=True)
class _TaskRow:
    task_id: str
    n: int
    base: int
    plus: int
    wall_ms: float
    canonical_s: float
    first_plus_failure: SuiteResult | None

    @property
    def cell(self) -> str:
        """The grid's colour class: all pass, base pass / plus fail (the point of EvalPlus), fail, mixed."""
        if self.plus == self.n:
            return "ok"
        if self.base > self.plus:
            return "plusfail"
        if self.base == 0:
            return "fail"
        return "mixed"


def _rows(report: PlusReport) -> list[_TaskRow]:
    by_task: dict[str, list[PlusSample]] = {}
    for sample in report.samples:
        by_task.setdefault(sample.task_id, []).append(sample)
    rows = []
    for task_id, samples in by_task.items():
        failure = next((s.plus for s in samples if s.base_passed and s.plus is not None and not s.plus_passed), None)
        rows.append(
            _TaskRow(
                task_id=task_id,
                n=len(samples),
                base=sum(s.base_passed for s in samples),
                plus=sum(s.plus_passed for s in samples),
                wall_ms=sum(s.base.wall_ms + (s.plus.wall_ms if s.plus else 0.0) for s in samples),
                canonical_s=report.canonical_s.get(task_id, 0.0),
                first_plus_failure=failure,
            )
        )
    return rows


def _categories(report: PlusReport) -> list[tuple[str, int, int]]:
    """(failure label, samples failing base with it, samples passing base but failing plus with it)."""
    base: Counter[str] = Counter()
    plus: Counter[str] = Counter()
    for s in report.samples:
        if not s.base_passed and s.base.failure is not None:
            base[s.base.failure.label] += 1
        elif s.base_passed and s.plus is not None and not s.plus_passed and s.plus.failure is not None:
            plus[s.plus.failure.label] += 1
    labels = sorted(set(base) | set(plus), key=lambda k: (-(base[k] + plus[k]), k))
    return [(label, base[label], plus[label]) for label in labels]


def _short_json(value: Any) -> str:
    try:
        text = json.dumps(value, default=repr)
    except (TypeError, ValueError):  # a float nan inside a key, a recursive value
        text = repr(value)
    return text if len(text) <= _SHOWN_INPUT else text[:_SHOWN_INPUT] + "…"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px auto;max-width:1180px;
 color:#1d2330;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.meta{color:#5b6475;font-size:12.5px}
.cards{display:flex;gap:14px;flex-wrap:wrap;margin:18px 0}
.card{border:1px solid #d8dce4;border-radius:8px;padding:12px 18px;min-width:170px}
.card .label{color:#5b6475;font-size:12.5px}.card .value{font-size:30px;font-weight:650}
.card.plus .value{color:#1f6f43}.card.base .value{color:#24497a}.card.drop .value{color:#a34a00}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(46px,1fr));gap:3px}
.grid div{font-size:11px;text-align:center;padding:5px 0;border-radius:3px;color:#fff}
.ok{background:#2e8b57}.plusfail{background:#e08a00;outline:2px solid #8a4b00}.fail{background:#c0392b}
.mixed{background:#7f8c8d}
.legend span{display:inline-block;padding:1px 8px;border-radius:3px;color:#fff;margin-right:6px;font-size:12px}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{border-bottom:1px solid #e3e6ec;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#f4f6f9;font-weight:600}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
code{font:12px ui-monospace,SFMono-Regular,Menlo,monospace;word-break:break-all}
"""


def render_html(report: PlusReport, *, title: str | None = None) -> str:
    """The report as one HTML document (inline CSS, no script, no external resource)."""
    name = report.dataset.value
    pretty = _TITLES.get(name, name)
    rows = _rows(report)
    base1 = report.base_pass_at_k.get("pass@1")
    plus1 = report.plus_pass_at_k.get("pass@1")
    heading = title or f"{pretty}+ evaluation"
    truth = "from the cache" if report.groundtruth_cached else f"computed in {report.groundtruth_s:.1f} s"
    out: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # No script may run and nothing may be fetched, whatever a sample's text contains.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        f"<title>{_e(heading)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(heading)}</h1>",
        f'<div class="meta">{len(report.samples)} samples · {len(rows)} tasks · dataset hash {_e(report.dataset_hash)}'
        f" · {_e(report.date)} · evaluated in {report.wall_s:.1f} s"
        f" (expected outputs {truth})"
        "</div>",
    ]
    if report.missing_tasks:
        out.append(f'<div class="meta">{len(report.missing_tasks)} tasks of the dataset have no sample.</div>')
    out.append('<div class="cards">')
    if base1 is not None:
        out.append(_card("base", f"{name} (base tests) pass@1", base1))
    if plus1 is not None:
        out.append(_card("plus", f"{name}+ (base + extra tests) pass@1", plus1))
    if base1 is not None and plus1 is not None:
        out.append(_card("drop", "lost to the extra tests", base1 - plus1))
    out.append("</div>")
    more = [(k, v, report.plus_pass_at_k.get(k)) for k, v in report.base_pass_at_k.items() if k != "pass@1"]
    if more:
        out.append('<table id="passk"><tr><th>k</th><th class="num">base</th><th class="num">base + extra</th></tr>')
        for k, b, p in more:
            out.append(f'<tr><td>{_e(k)}</td><td class="num">{b:.3f}</td><td class="num">{_fmt(p)}</td></tr>')
        out.append("</table>")

    counts = Counter(r.cell for r in rows)
    out.append("<h2>Tasks</h2>")
    out.append(
        '<div class="legend">'
        f'<span class="ok">pass {counts["ok"]}</span>'
        f'<span class="plusfail">base pass, plus fail {counts["plusfail"]}</span>'
        f'<span class="fail">base fail {counts["fail"]}</span>'
        f'<span class="mixed">mixed samples {counts["mixed"]}</span></div><p></p>'
    )
    out.append('<div class="grid" id="grid">')
    for r in rows:
        tip = f"{r.task_id}: base {r.base}/{r.n}, base+plus {r.plus}/{r.n}"
        out.append(f'<div class="{r.cell}" title="{_e(tip)}">{_e(r.task_id.rsplit("/", 1)[-1])}</div>')
    out.append("</div>")

    plusfail = [r for r in rows if r.first_plus_failure is not None]
    if plusfail:
        out.append("<h2>Pass the base tests, fail the extra ones</h2>")
        out.append('<table id="plusfail"><tr><th>task</th><th>why</th><th>first failing extra input</th></tr>')
        for r in plusfail:
            failure = r.first_plus_failure
            assert failure is not None
            why = failure.failure.label if failure.failure else failure.status.value
            shown = _short_json(failure.fail_inputs[0]) if failure.fail_inputs else ""
            out.append(f"<tr><td>{_e(r.task_id)}</td><td>{_e(why)}</td><td><code>{_e(shown)}</code></td></tr>")
        out.append("</table>")

    categories = _categories(report)
    out.append("<h2>Failure categories</h2>")
    if categories:
        out.append(
            '<table id="categories"><tr><th>category</th><th class="num">failing base</th>'
            '<th class="num">passing base, failing plus</th></tr>'
        )
        for label, b, p in categories:
            out.append(f'<tr><td>{_e(label)}</td><td class="num">{b}</td><td class="num">{p}</td></tr>')
        out.append("</table>")
    else:
        out.append("<p>No failures.</p>")

    slowest = sorted(rows, key=lambda r: r.wall_ms, reverse=True)[:10]
    out.append("<h2>Slowest tasks</h2>")
    out.append(
        '<table id="slowest"><tr><th>task</th><th class="num">samples run, s</th>'
        '<th class="num">canonical solution, s</th><th class="num">samples</th></tr>'
    )
    for r in slowest:
        out.append(
            f'<tr><td>{_e(r.task_id)}</td><td class="num">{r.wall_ms / 1000:.2f}</td>'
            f'<td class="num">{r.canonical_s:.2f}</td><td class="num">{r.n}</td></tr>'
        )
    out.append("</table></body></html>")
    return "\n".join(out)


def _card(kind: str, label: str, value: float) -> str:
    return f'<div class="card {kind}"><div class="label">{_e(label)}</div><div class="value">{value:.3f}</div></div>'


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def write_html(report: PlusReport, path: str, *, title: str | None = None) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(render_html(report, title=title))
