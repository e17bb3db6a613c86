"""`sparsealign` command line. Verbs mirror the stages: data -> align -> sparsify -> eval -> study.

Each stage contributes its verbs through `register(cli)` in its own `cli.py`; those modules import only click and
the stdlib at module level, so `--help`, `data inspect` and `sandbox run` start without torch.
"""

from __future__ import annotations

import os
import sys

import click

from sparsealign import __version__
from sparsealign.align.config import LABELS, RATIONALE_METHODS, facts
from sparsealign.errors import UserError
from sparsealign.settings import DATA_DIR_ENV, RUNS_DIR_ENV
from sparsealign.sparse.modes import MODES

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}
# `--help` lists the verbs in the order a run goes through them (click sorts alphabetically by default)
PIPELINE_ORDER = ["data", "pretrain", "convert", "rationales", "align", "sparsify", "eval", "sandbox", "study"]


class PipelineGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        rank = {name: i for i, name in enumerate(PIPELINE_ORDER)}
        return sorted(self.commands, key=lambda name: (rank.get(name, len(rank)), name))


HELP = f"""Preference alignment ({LABELS}) under PowerInfer-style activation-sparse inference with
dynamic thresholds, across model sizes.

\b
Pipeline: data -> pretrain/convert -> rationales -> align -> sparsify -> eval -> study.
`sparsealign study` runs it all; every stage is also a verb of its own that reads and writes files in
runs/<name>/, so it can run alone.
"""


@click.group(cls=PipelineGroup, context_settings=CONTEXT, help=HELP)
@click.version_option(__version__, prog_name="sparsealign")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help=f"Directory that relative dataset names resolve against (env ${DATA_DIR_ENV}; default ../shared/data).")
@click.option("--runs-dir", type=click.Path(file_okay=False), default=None,
              help=f"Where run directories are created (env ${RUNS_DIR_ENV}; default ./runs).")
def cli(data_dir: str | None, runs_dir: str | None) -> None:
    """The `sparsealign` group (its help is HELP: the methods are read from the method table)."""
    if data_dir is not None:
        os.environ[DATA_DIR_ENV] = data_dir
    if runs_dir is not None:
        os.environ[RUNS_DIR_ENV] = runs_dir


# Verb groups whose commands come from several modules (each module adds its own commands to them).
GROUPS = {
    "data": "Read, check and prepare preference pairs and MBPP tasks (`data inspect`, `data prepare`).",
    "rationales": "Generate rationales that explain why the chosen response is preferred (for "
                  f"{'/'.join(facts(m).label for m in RATIONALE_METHODS)}).",
    "sparsify": f"Profile, calibrate, apply and benchmark activation sparsity ({', '.join(MODES)}).",
    "sandbox": "Run untrusted Python programs under the evaluation sandbox.",
    "eval": "Evaluate models: MBPP pass@k, preference metrics and divergence, judge win rates.",
    "convert": "Convert external checkpoints (llama2.c) into Hugging Face models.",
}

# Modules that contribute verbs, in pipeline order; each defines `register(cli: click.Group)` and imports no torch.
STAGE_CLI_MODULES = [
    "sparsealign.data.cli",
    "sparsealign.align.cli",
    "sparsealign.align.rationales_cli",
    "sparsealign.sparse.cli",
    "sparsealign.sparse.bench.cli",
    "sparsealign.sandbox.cli",
    "sparsealign.evaluate.mbpp.cli",
    "sparsealign.evaluate.preference.cli",
    "sparsealign.evaluate.judges.cli",
    "sparsealign.evaluate.report_cli",
    "sparsealign.models.convert_cli",
    "sparsealign.models.pretrain_cli",
    "sparsealign.study.cli",
]


def _register_stages() -> None:
    import importlib

    for name, help_text in GROUPS.items():
        cli.add_command(click.Group(name, help=help_text, context_settings=CONTEXT, no_args_is_help=True))
    for module in STAGE_CLI_MODULES:
        importlib.import_module(module).register(cli)


_register_stages()


def _fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors become one line on stderr and a non-zero exit, never a traceback."""
    # Hub/transformers progress bars ("Loading weights", shard downloads) would sit above a one-line error and bury
    # our own progress lines; a user who wants them sets HF_HUB_DISABLE_PROGRESS_BARS=0.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        cli.main(args=argv, prog_name="sparsealign", standalone_mode=False)
    except UserError as exc:
        return _fail(str(exc), exc.exit_code)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except (click.Abort, KeyboardInterrupt):
        return _fail("interrupted", 130)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
        where = exc.filename or ""
        return _fail(f"{where}: {exc.strerror or exc}" if where else str(exc))
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
