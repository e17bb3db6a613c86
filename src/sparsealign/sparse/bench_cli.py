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


def check_model_dir(spec: str) -> None:
    """Fail early (before any measurement) on a --model the project's loader cannot resolve."""
    from sparsealign.models.loading import resolve_model

    resolve_model(spec)


def load_model_dir(spec: str):
    """fp32 model + tokenizer on the CPU from any --model spec (folder, hub id, .gguf, short name, adapter)."""
    from sparsealign.models.loading import load_model_and_tokenizer

    return load_model_and_tokenizer(spec, device="cpu", dtype="float32")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@click.command("bench")
@click.option("--model", "model_dir", default=None,
              help="Model: HF directory (e.g. one written by `sparsealign convert llama2c`), hub id, .gguf file, "
                   "PEFT adapter folder or smollm2-135m-instruct.")
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
@click.option("--predictor-cutoff", type=click.Choice(["auto", "recall", "density"]), default="auto",
              show_default=True,
              help="Predictor mode: recall = the calibrated recall-target cut-off (real weights); density = keep "
                   "exactly 1-sparsity of neurons on the timed trajectory (speed only); auto = recall for --model, "
                   "density for --preset (random weights cannot be predicted).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with a `results` list.")
def bench(model_dir: str | None, preset: str | None, layers: int | None, extrapolate_layers: int | None,
          sparsity: str, modes: str, tokens: int, repeats: int, threads: int, calib_file: Path | None,
          prompt: str | None, predictor_cutoff: str, as_json: bool) -> None:
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
    if model_dir is not None:
        check_model_dir(model_dir)
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
    from sparsealign.sparse.config import PredictorConfig

    if predictor_cutoff == "auto":
        predictor_cutoff = "density" if preset else "recall"
    result = bench_decode(model, tokenizer, texts[:16], prompt or texts[-1][:200], sparsities=sparsities,
                          modes=mode_list, tokens=tokens, repeats=repeats, extrapolate_layers=extrapolate_layers,
                          predictor_cutoff=predictor_cutoff,
                          predictor_epochs=2 if preset else PredictorConfig().epochs, log=_log)
    result.update(model=str(model_dir) if model_dir else f"preset:{preset}", predictor_cutoff=predictor_cutoff)
    if as_json:
        click.echo(json.dumps(result, sort_keys=True))
        return
    click.echo(f"{'mode':>9} {'sparsity':>8} {'dense tok/s':>11} {'sparse tok/s':>12} {'speedup':>7} {'ideal':>6} "
               f"{'FFN x':>6} {'FFN ideal':>9}")
    for r in result["results"]:
        click.echo(f"{r['mode']:>9} {r['sparsity']:>8.2f} {r['dense_tokens_per_s']:>11.2f} "
                   f"{r['sparse_tokens_per_s']:>12.2f} {r['speedup']:>7.2f} {r['ideal_speedup']:>6.2f} "
                   f"{r['ffn_speedup']:>6.2f} {r['ffn_ideal_speedup']:>9.2f}")


def _read_chunks(path: Path, chars: int = 1200) -> list[str]:
    from sparsealign.errors import DataError

    text = path.read_text(encoding="utf-8")
    chunks = [c for c in (text[i:i + chars].strip() for i in range(0, len(text), chars)) if c]
    if not chunks:
        raise DataError(path, "no text in file")
    return chunks


@click.command("curve")
@click.option("--model", "model_dir", required=True,
              help="HF model directory (e.g. stories260K converted with `sparsealign convert llama2c`).")
@click.option("--sparsity", "sparsity", default="0,0.1,0.2,0.3,0.5,0.7,0.9", show_default=True,
              help="Comma-separated target sparsities.")
@click.option("--modes", default="static,dynamic", show_default=True, help="Comma-separated modes.")
@click.option("--calib-texts", type=click.IntRange(1, 10000), default=24, show_default=True,
              help="Calibration texts sampled from the dense model (seed 0) when --calib-file is not given.")
@click.option("--eval-texts", type=click.IntRange(1, 10000), default=12, show_default=True,
              help="Held-out texts sampled from the dense model (seed 1, disjoint) when --eval-file is not given.")
@click.option("--new-tokens", type=click.IntRange(8, 4096), default=128, show_default=True,
              help="Length of each sampled text in tokens.")
@click.option("--calib-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Calibrate on this UTF-8 text instead (split into ~1200-character chunks), e.g. for a domain shift.")
@click.option("--eval-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Evaluate on this UTF-8 text instead of sampled text.")
@click.option("--prompt-tokens", type=click.IntRange(0, 4096), default=0, show_default=True,
              help="First positions of each text run dense as a prompt (prefill=dense); 0 = every position sparse.")
@click.option("--threads", type=click.IntRange(1, 256), default=1, show_default=True,
              help="torch CPU threads (1 is fastest for small models on shared cores).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output directory for curve.json/csv/png and the texts used; default runs/curve-<model name>.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (rows and file paths).")
def curve(model_dir: str, sparsity: str, modes: str, calib_texts: int, eval_texts: int, new_tokens: int,
          calib_file: Path | None, eval_file: Path | None, prompt_tokens: int, threads: int, out_dir: Path | None,
          as_json: bool) -> None:
    """KL(dense || sparse) per token and next-token top-1 agreement versus sparsity, static vs dynamic.

    Calibrates static thresholds at each sparsity, then evaluates each mode teacher-forced on held-out text.
    Without text files, the dense model samples its own calibration and (disjoint) held-out texts.

    \b
    Example:
      sparsealign convert llama2c ../shared/data/models/stories260K/stories260K.bin \\
          --tokenizer ../shared/data/models/stories260K/tok512.bin --out models/stories260K-hf
      sparsealign sparsify curve --model models/stories260K-hf --json
    """
    sparsities = parse_floats(sparsity, "--sparsity")
    mode_list = parse_modes(modes)
    check_model_dir(model_dir)
    import torch

    from sparsealign.io import atomic_write_json
    from sparsealign.settings import runs_dir
    from sparsealign.sparse.bench_curve import sample_texts, sparsity_curve, write_curve

    torch.set_num_threads(threads)
    model, tokenizer = load_model_dir(model_dir)
    calib = _read_chunks(calib_file) if calib_file else sample_texts(model, tokenizer, calib_texts,
                                                                    new_tokens=new_tokens, seed=0)
    held = _read_chunks(eval_file) if eval_file else sample_texts(model, tokenizer, eval_texts,
                                                                 new_tokens=new_tokens, seed=1)
    result = sparsity_curve(model, tokenizer, calib, held, sparsities, mode_list, prompt_tokens=prompt_tokens,
                            log=_log)
    out_dir = out_dir or runs_dir() / f"curve-{Path(model_dir).resolve().name}"
    result.update(model=str(model_dir), calib_source=str(calib_file or "sampled:seed0"),
                  eval_source=str(eval_file or "sampled:seed1"))
    paths = write_curve(result, out_dir, title=f"{Path(model_dir).resolve().name}: sparse vs dense")
    paths.append(atomic_write_json(out_dir / "texts.json", {"calibration": calib, "eval": held}))
    result["files"] = [str(p) for p in paths]
    if as_json:
        click.echo(json.dumps(result, sort_keys=True))
        return
    click.echo(f"{'mode':>8} {'target':>6} {'realized':>8} {'KL nats/tok':>11} {'top-1 agree':>11}")
    for r in result["rows"]:
        click.echo(f"{r['mode']:>8} {r['sparsity']:>6.2f} {r['realized_sparsity']:>8.3f} {r['kl_mean']:>11.4f} "
                   f"{r['top1_agreement']:>11.3f}")
    click.echo(f"wrote {', '.join(result['files'])}")


def register(cli: click.Group) -> None:
    """Add `bench` (and `curve`) to the shared `sparsify` group."""
    cli.commands["sparsify"].add_command(bench)
    cli.commands["sparsify"].add_command(curve)
