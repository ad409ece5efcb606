"""The `digitq` command: submit images, zips and folders, follow jobs, save results.

Built on argparse + tqdm rather than typer + rich: argparse is the standard library and tqdm one
of the client's two dependencies (with httpx), so the command adds almost nothing to install, and
tqdm's bars turn themselves off when stderr is not a terminal.

    digitq submit scans/ more.zip --wait --out results.csv
    digitq status|wait|results|cancel JOB_ID
    digitq list [--status failed]
    digitq predict seven.png
    digitq --version

Settings: `--url` or `DIGITQ_URL` (default http://127.0.0.1:8000), `--api-key` or `DIGITQ_API_KEY`.
Output: human lines on a terminal, JSON when piped (`--json` forces it; lists and results are JSON
lines). Exit codes: 0 succeeded (or done), 1 the job failed, was cancelled or expired (a 404: the
server keeps no trace of expired jobs), 2 usage (a bad argument, or the server refused the request
as another 4xx), 3 the server cannot be reached (or answers 5xx), 130 interrupted without cancelling,
141 the output's reader went away (`digitq list | head`: no traceback). 429 and 503 are retried
after their Retry-After, as the Python client does (it is the client underneath).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn, TextIO

from tqdm import tqdm

from digitq import __version__
from digitq.client import Client, Item, Job, ProblemError, Unreachable

OK, FAILED, USAGE, UNREACHABLE, INTERRUPTED = 0, 1, 2, 3, 130
BROKEN_PIPE = 141  # 128 + SIGPIPE: what the shell reports for a tool whose reader left
OUT_FORMATS = (".csv", ".jsonl")


class UsageError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=os.environ.get("DIGITQ_URL", "http://127.0.0.1:8000"),
                        help="the API (env DIGITQ_URL; default %(default)s)")  # fmt: skip
    common.add_argument("--api-key", default=os.environ.get("DIGITQ_API_KEY"),
                        help="API key (env DIGITQ_API_KEY)")  # fmt: skip
    common.add_argument("--json", action="store_true", help="JSON output even on a terminal")

    # The shared options belong to each command (`digitq status JOB --json`): on the top parser too,
    # a command's defaults would overwrite them.
    parser = argparse.ArgumentParser(prog="digitq", description="Recognise handwritten digits with digitq.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    submit = commands.add_parser("submit", parents=[common], help="submit images, zips, folders as one job")
    submit.add_argument("paths", nargs="+", metavar="PATH", help="an image, a .zip or a folder")
    submit.add_argument("--wait", action="store_true", help="follow the job until it finishes")
    submit.add_argument("--out", type=Path, help="with --wait: save every result to results.csv or .jsonl")
    submit.add_argument("--webhook", help="URL the server calls when the job finishes")
    submit.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE",
                        help="attach metadata to the job (repeatable)")  # fmt: skip
    submit.add_argument("--idempotency-key", help="your own key (default: a new one per run)")

    for name, text in (("status", "show a job"), ("cancel", "cancel a queued or running job")):
        commands.add_parser(name, parents=[common], help=text).add_argument("job")
    wait = commands.add_parser("wait", parents=[common], help="follow a job until it finishes")
    wait.add_argument("job")
    wait.add_argument("--out", type=Path, help="save every result to results.csv or .jsonl")
    results = commands.add_parser("results", parents=[common], help="print or save a job's results")
    results.add_argument("job")
    results.add_argument("--out", type=Path, help="save to results.csv or .jsonl instead of printing")
    results.add_argument("--failed", action="store_true", help="only the items that failed")
    label = commands.add_parser("label", parents=[common], help="record the right digits of a job's items")
    label.add_argument("job")
    label.add_argument("--from", dest="source", type=Path, required=True, metavar="CSV",
                       help="a CSV with the header name,digit (names as the results show them)")  # fmt: skip
    listing = commands.add_parser("list", parents=[common], help="your jobs, newest first")
    listing.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    listing.add_argument("--limit", type=int, default=20, help="at most this many (default %(default)s)")
    predict = commands.add_parser("predict", parents=[common], help="recognise one image, answered inline")
    predict.add_argument("image", type=Path)
    return parser


class Output:
    """Human lines on a terminal, JSON when piped or with --json."""

    def __init__(self, as_json: bool, stream: TextIO = sys.stdout) -> None:
        self.json = as_json or not stream.isatty()
        self.stream = stream

    def emit(self, data: Any, human: str) -> None:
        print(json.dumps(data, default=str) if self.json else human, file=self.stream, flush=True)


def _describe(job: Job) -> str:
    c = job.counts
    line = f"job {job.id} {job.status}: {c.done}/{c.total} done, {c.failed} failed"
    if job.model_version:
        line += f" (model {job.model_version})"
    return line + (f"\n  error: {job.error}" if job.error else "")


def _exit_code(job: Job) -> int:
    return FAILED if job.status in {"failed", "cancelled", "expired"} else OK


def _metadata(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--metadata {pair!r}: write KEY=VALUE")
        out[key] = value
    return out


def _check_out(out: Path | None) -> None:
    if out is not None and out.suffix.lower() not in OUT_FORMATS:
        raise UsageError(f"--out {out}: name a .csv or .jsonl file")


def _save(client: Client, job: Job, out: Path, failed_only: bool = False) -> int:
    if out.suffix.lower() == ".csv" and not failed_only:
        with out.open("wb") as sink:
            client.download_csv(job, sink)
        return job.counts.total
    count = 0
    with out.open("w", encoding="utf-8") as sink:
        if out.suffix.lower() == ".csv":  # --failed: the server's CSV has every item; write our own
            import csv

            writer = csv.DictWriter(sink, fieldnames=list(Item.__dataclass_fields__))
            writer.writeheader()
            for item in client.results(job, status="failed"):
                writer.writerow(item.as_dict())
                count += 1
            return count
        for item in client.results(job, status="failed" if failed_only else None):
            sink.write(json.dumps(item.as_dict()) + "\n")
            count += 1
    return count


def _follow(client: Client, job: Job, out: Output) -> Job:
    """Wait with a progress bar; Ctrl-C asks whether to cancel the job."""
    print(f"job {job.id} {job.status}; waiting (Ctrl-C to cancel it or leave it running)", file=sys.stderr)
    bar = tqdm(total=job.counts.total or None, unit="img", desc="recognising", file=sys.stderr,
               disable=None, dynamic_ncols=True)  # fmt: skip

    def progress(current: Job) -> None:
        bar.total = current.counts.total
        bar.set_postfix(failed=current.counts.failed, refresh=False)
        bar.update(current.counts.done - bar.n)

    try:
        return client.wait(job, progress=progress)
    except KeyboardInterrupt:
        bar.close()
        if _ask(f"\ncancel job {job.id}? [y/N] "):
            cancelled = client.cancel(job)
            out.emit(cancelled.raw, _describe(cancelled))
            raise SystemExit(_exit_code(cancelled)) from None
        print(f"job {job.id} keeps running: `digitq wait {job.id}` follows it", file=sys.stderr)
        raise SystemExit(INTERRUPTED) from None
    finally:
        bar.close()


def _ask(question: str) -> bool:
    print(question, end="", file=sys.stderr, flush=True)
    try:
        answer = sys.stdin.readline()
    except (KeyboardInterrupt, OSError):  # a second Ctrl-C: leave the job alone
        return False
    return answer.strip().lower() in {"y", "yes"}


def _submit(client: Client, args: argparse.Namespace, out: Output) -> int:
    _check_out(args.out)
    if args.out and not args.wait:
        raise UsageError("--out needs --wait (or use `digitq results JOB --out FILE` later)")
    metadata = _metadata(args.metadata)
    paths = [Path(p) for p in args.paths]
    for path in paths:
        if not path.exists():
            raise UsageError(f"{path}: no such file or folder")
    bar = tqdm(unit="B", unit_scale=True, desc="uploading", file=sys.stderr, disable=None, dynamic_ncols=True)

    def upload_progress(sent: int, total: int) -> None:
        bar.total = total
        bar.update(sent - bar.n)  # update, not refresh: tqdm redraws at most every 0.1 s

    key = args.idempotency_key or str(uuid.uuid4())  # one key for every retry of this run
    try:
        job = client.submit(paths, webhook=args.webhook, metadata=metadata or None,
                            idempotency_key=key, upload_progress=upload_progress)  # fmt: skip
    finally:
        bar.close()
    if not args.wait:
        out.emit(job.raw, _describe(job))
        return OK
    return _finish(client, _follow(client, job, out), args.out, out)


def _finish(client: Client, job: Job, path: Path | None, out: Output) -> int:
    if path is not None:
        count = _save(client, job, path)
        print(f"saved {count} results to {path}", file=sys.stderr)
    out.emit(job.raw, _describe(job))
    return _exit_code(job)


def _results(client: Client, args: argparse.Namespace, out: Output) -> int:
    _check_out(args.out)
    if args.out:
        count = _save(client, client.get(args.job), args.out, failed_only=args.failed)
        print(f"saved {count} results to {args.out}", file=sys.stderr)
        return OK
    for item in client.results(args.job, status="failed" if args.failed else None):
        out.emit(item.as_dict(), _item_line(item))
    return OK


def _item_line(item: Item) -> str:
    label = "" if item.label is None else f"  label: {item.label}"
    if item.error:
        return f"{item.index:>6}  {item.name}  error: {item.error}{label}"
    if item.digit is None:
        return f"{item.index:>6}  {item.name}  {item.status}{label}"
    flag = "  (low confidence)" if item.low_confidence else ""
    return f"{item.index:>6}  {item.name}  {item.digit}  {item.confidence:.3f}{flag}{label}"


def _label(client: Client, args: argparse.Namespace, out: Output) -> int:
    applied = client.label(args.job, args.source)
    out.emit(
        applied, f"{applied['set']} label(s) set, {applied['cleared']} cleared in job {applied['job_id']}"
    )
    return OK


def _list(client: Client, args: argparse.Namespace, out: Output) -> int:
    for job in _jobs(client, args.status, args.limit):
        created = job.created_at.strftime("%Y-%m-%d %H:%M") if job.created_at else ""
        c = job.counts
        out.emit(job.raw, f"{job.id}  {job.status:<9}  {c.done}/{c.total} ({c.failed} failed)  {created}")
    return OK


def _jobs(client: Client, status: str | None, limit: int) -> Iterator[Job]:
    return client.list(status=status, limit=limit, page_size=min(max(limit, 1), 100))


def run(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    out = Output(args.json)
    with Client(args.url, api_key=args.api_key) as client:
        try:
            if args.command == "submit":
                return _submit(client, args, out)
            if args.command == "status":
                job = client.get(args.job)
                out.emit(job.raw, _describe(job))
                return _exit_code(job)
            if args.command == "wait":
                _check_out(args.out)
                return _finish(client, _follow(client, client.get(args.job), out), args.out, out)
            if args.command == "results":
                return _results(client, args, out)
            if args.command == "cancel":
                job = client.cancel(args.job)
                out.emit(job.raw, _describe(job))
                return OK
            if args.command == "list":
                return _list(client, args, out)
            if args.command == "label":
                return _label(client, args, out)
            prediction = client.predict(args.image)
            flag = " (low confidence)" if prediction.low_confidence else ""
            out.emit(prediction.__dict__, f"{prediction.digit}  {prediction.confidence:.3f}{flag}")
            return OK
        except UsageError as exc:
            parser.error(str(exc))
        except Unreachable as exc:
            return _fail(UNREACHABLE, f"{exc}\n(is the server running? set DIGITQ_URL or --url)")
        except ProblemError as exc:
            # The server cannot tell an expired job from an unknown one: both are 404, "expired" (1).
            code = FAILED if exc.status == 404 else USAGE if exc.status < 500 else UNREACHABLE
            return _fail(code, f"{exc.status} {exc.title}: {exc.detail}")
        except FileNotFoundError as exc:
            return _fail(USAGE, str(exc))
        except KeyboardInterrupt:
            return _fail(INTERRUPTED, "interrupted")
    return OK  # pragma: no cover


def _fail(code: int, message: str) -> int:
    print(f"digitq: {message}", file=sys.stderr)
    return code


def main() -> NoReturn:
    try:
        code = run()
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`digitq list | head`): stop quietly, as a tool killed by SIGPIPE
        # would. stdout now points at /dev/null, so the interpreter's last flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = BROKEN_PIPE
    sys.exit(code)


if __name__ == "__main__":
    main()
