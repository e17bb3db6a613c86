"""`sparsealign sparsify bench` (decode speed) and `sparsealign sparsify curve` (quality vs sparsity)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

DEFAULT_SPARSITIES = "0.5,0.7,0.9"
PRESET_NAMES = ["1b-relu", "1b-relu-small", "tiny-relu"]  # mirrors sparse.bench.PRESETS (no torch import here)
MODES = ("static", "dynamic", "predictor")


def parse_floats(value: str, option: str, *, lo: float = 0.0, hi: float = 1.0) -> list[float]:
    from sparsealign.errors import UserError

    try:
        out = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{option} {value!r}: expected comma-separated numbers, e.g. 0.5,0.7,0.9") from None
    if not out or any(not lo <= v < hi for v in out):
        raise UserError(f"{option} {value!r}: every value must be in [{lo}, {hi})")
    return out


def parse_modes(value: str) -> list[str]:
    from sparsealign.errors import UserError

    modes = [m.strip() for m in value.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise UserError(f"--modes {value!r}: unknown mode {bad[0] if bad else ''!r}; choose from {', '.join(MODES)}")
    return modes


def load_model_dir(path: Path):
    """fp32 model + tokenizer from an HF directory, with one-line errors for a wrong path."""
    from sparsealign.errors import UserError

    if not (path / "config.json").exists():
        raise UserError(f"{path}: not a Hugging Face model directory (no config.json)",
                        hint="pass a directory written by save_pretrained or `sparsealign convert llama2c`")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@click.command("bench")
@click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="HF model directory (e.g. one written by `sparsealign convert llama2c`).")
@click.option("--preset", type=click.Choice(PRESET_NAMES), default=None,
              help="Random-weight ReLU Llama instead of --model: 1b-relu (TinyLlama-1.1B shape, 22 layers), "
                   "1b-relu-small (same widths, 4 layers), tiny-relu (for smoke tests).")
@click.option("--layers", type=click.IntRange(1, 200), default=None, help="Override the preset's number of layers.")
@click.option("--extrapolate-layers", type=click.IntRange(1, 200), default=None,
              help="Also report the speedup extrapolated to this depth from the measured per-layer times.")
@click.option("--sparsity", "sparsity", default=DEFAULT_SPARSITIES, show_default=True,
              help="Comma-separated target sparsities (fraction of FFN neurons skipped).")
@click.option("--modes", default="static,dynamic,predictor", show_default=True,
              help="Comma-separated modes: static, dynamic, predictor.")
@click.option("--tokens", type=click.IntRange(1, 4096), default=32, show_default=True,
              help="Decode steps timed per run.")
@click.option("--repeats", type=click.IntRange(1, 50), default=3, show_default=True,
              help="Dense/sparse runs per row, interleaved; the median is reported.")
@click.option("--threads", type=click.IntRange(1, 256), default=2, show_default=True, help="torch CPU threads.")
@click.option("--calib-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Calibration text (UTF-8, split into ~1200-character chunks); default: this package's source.")
@click.option("--prompt", default=None, help="Decode prompt; default: a chunk of the calibration text.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with a `results` list.")
def bench(model_dir: Path | None, preset: str | None, layers: int | None, extrapolate_layers: int | None,
          sparsity: str, modes: str, tokens: int, repeats: int, threads: int, calib_file: Path | None,
          prompt: str | None, as_json: bool) -> None:
    """Batch-1 fp32 CPU decode speed: dense vs sparse per mode and sparsity, with the Amdahl ideal.

    Each row: mode, sparsity, dense_tokens_per_s, sparse_tokens_per_s, speedup, ideal_speedup (FFN share of
    dense decode time measured; FFN FLOPs skipped from the realized active sets, predictor cost included), plus
    the FFN block's own speedup and its fraction of ideal. See docs/benchmarks.md.

    \b
    Examples:
      sparsealign sparsify bench --preset 1b-relu-small --sparsity 0.5,0.7,0.9 --json
      sparsealign sparsify bench --model models/stories260K-hf --modes static,dynamic --tokens 64
    """
    from sparsealign.errors import UserError

    if (model_dir is None) == (preset is None):
        raise UserError("pass exactly one of --model DIR or --preset NAME")
    sparsities = parse_floats(sparsity, "--sparsity")
    mode_list = parse_modes(modes)
    import torch

    from sparsealign.sparse.bench import bench_decode, build_preset, local_texts

    torch.set_num_threads(threads)
    if calib_file is not None:
        text = calib_file.read_text(encoding="utf-8")
        texts = [text[i:i + 1200] for i in range(0, len(text), 1200)]
    else:
        texts = local_texts()
    if not texts:
        raise UserError(f"{calib_file}: calibration file is empty")
    if preset is not None:
        from sparsealign.models.tiny import train_tokenizer

        _log(f"building random-weight preset {preset} ...")
        model, tokenizer = build_preset(preset, num_layers=layers), train_tokenizer(local_texts(), 512)
    else:
        model, tokenizer = load_model_dir(model_dir)
    result = bench_decode(model, tokenizer, texts[:16], prompt or texts[-1][:200], sparsities=sparsities,
                          modes=mode_list, tokens=tokens, repeats=repeats, extrapolate_layers=extrapolate_layers,
                          log=_log)
    result["model"] = str(model_dir) if model_dir else f"preset:{preset}"
    if as_json:
        click.echo(json.dumps(result, sort_keys=True))
        return
    click.echo(f"{'mode':>9} {'sparsity':>8} {'dense tok/s':>11} {'sparse tok/s':>12} {'speedup':>7} {'ideal':>6} "
               f"{'FFN x':>6} {'FFN ideal':>9}")
    for r in result["results"]:
        click.echo(f"{r['mode']:>9} {r['sparsity']:>8.2f} {r['dense_tokens_per_s']:>11.2f} "
                   f"{r['sparse_tokens_per_s']:>12.2f} {r['speedup']:>7.2f} {r['ideal_speedup']:>6.2f} "
                   f"{r['ffn_speedup']:>6.2f} {r['ffn_ideal_speedup']:>9.2f}")


def register(cli: click.Group) -> None:
    """Add `bench` (and `curve`) to the shared `sparsify` group."""
    cli.commands["sparsify"].add_command(bench)
