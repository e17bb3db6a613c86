"""`sparsealign sandbox run FILE`: run one untrusted Python program under the evaluation sandbox.

Stdlib + click only (the sandbox itself is stdlib-only), so this verb never imports torch, numpy or pandas.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from sparsealign.errors import UserError


def register(cli: click.Group) -> None:
    """Add `run` to the shared `sandbox` group."""
    cli.commands["sandbox"].add_command(run)


@click.command("run")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="Wall-clock limit in seconds; the program's whole process tree is killed when it runs out.")
@click.option("--memory-mb", type=click.IntRange(min=16), default=1024, show_default=True,
              help="Address-space limit (RLIMIT_AS) of every process of the program, in MiB.")
@click.option("--max-output-bytes", type=click.IntRange(min=0), default=64_000, show_default=True,
              help="How much of stdout and of stderr is captured (the rest is dropped; `truncated` says so).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object (status, reason, duration_s, stdout, stderr, returncode, isolation).")
def run(file: Path, timeout_s: float, memory_mb: int, max_output_bytes: int, as_json: bool) -> None:
    """Run the Python program FILE in the sandbox and report passed | failed | timeout | error.

    \b
    `passed` means it ran to its last line and exited 0 (sys.exit(0) or os._exit(0) earlier is a failure).
    The program runs in its own PID, mount, network and IPC namespaces under an unprivileged uid, with rlimits,
    a private temporary working directory and no environment of the caller; `isolation` in the JSON says which
    layers this machine allowed. Exit status: 0 if passed, 1 otherwise.
    """
    from sparsealign.sandbox.pool import run_program

    try:
        source = file.read_bytes().decode("utf-8")
    except OSError as exc:
        raise UserError(f"{file}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{file}: not UTF-8 text (byte {exc.start})", hint="save the program as UTF-8") from None
    result = run_program(source, timeout_s=timeout_s, memory_mb=memory_mb, max_output_bytes=max_output_bytes)
    if as_json:
        click.echo(json.dumps(result.to_dict(), ensure_ascii=False))
    else:
        click.echo(f"{result.status}: {result.reason} ({result.duration_s:.3f} s)")
        for name, text in (("stdout", result.stdout), ("stderr", result.stderr)):
            if text:
                click.echo(f"--- {name} ---\n{text.rstrip()}")
        off = [k for k, v in result.isolation.items() if v is False]
        if off:
            click.echo(f"warning: isolation layers not in force here: {', '.join(off)}", err=True)
    raise SystemExit(0 if result.passed else 1)
