"""`sparsealign sparsify bench` (decode speed) and `sparsealign sparsify curve` (quality vs sparsity)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from sparsealign.models.loading import LoadSettings, load_model, resolve_model
from sparsealign.sparse.modes import DYNAMIC, MODES, STATIC

DEFAULT_SPARSITIES = "0.5,0.7,0.9"
PRESET_NAMES = ["1b-relu", "1b-relu-small", "tiny-relu"]  # mirrors sparse.bench.PRESETS (no torch import here)


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

    resolve_model(spec)


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
@click.option("--modes", default=",".join(MODES), show_default=True,
              help=f"Comma-separated modes: {', '.join(MODES)}.")
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
    """Batch-1 fp32 CPU decode speed: dense vs sparse per mode and sparsity, against the memory roofline.

    Each row: mode, sparsity, dense_tokens_per_s, sparse_tokens_per_s, speedup, ideal_speedup (dense / sparse
    bytes read per token), dense_fraction_of_roofline and sparse_fraction_of_roofline (measured tokens/s over
    bandwidth / bytes, the read bandwidth measured in-process), per-token overhead beyond weight traffic, the
    FFN block's own speedup, and KL / top-1 agreement of the sparse steps. See docs/benchmarks.md.

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

    from sparsealign.sparse.bench.speed import bench_decode, build_preset, local_texts

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
        model, tokenizer = load_model(model_dir, LoadSettings())
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
               f"{'dense %roof':>11} {'sparse %roof':>12}")
    for r in result["results"]:
        click.echo(f"{r['mode']:>9} {r['sparsity']:>8.2f} {r['dense_tokens_per_s']:>11.2f} "
                   f"{r['sparse_tokens_per_s']:>12.2f} {r['speedup']:>7.2f} {r['ideal_speedup']:>6.2f} "
                   f"{100 * r['dense_fraction_of_roofline']:>10.0f}% {100 * r['sparse_fraction_of_roofline']:>11.0f}%")
    click.echo(f"bandwidth {result['bandwidth_gb_per_s']:.1f} GB/s (measured in-process)")


def _read_chunks(path: Path, chars: int = 1200) -> list[str]:
    from sparsealign.errors import DataError

    text = path.read_text(encoding="utf-8")
    chunks = [c for c in (text[i:i + chars].strip() for i in range(0, len(text), chars)) if c]
    if not chunks:
        raise DataError(path, "no text in file")
    return chunks


DOMAINS = ("mbpp", "hh")  # MBPP code, HH helpful-base dialogue (sparse.texts)
SITE_NAMES = ("intermediate", "ffn_input", "attn_input", "attn_output")  # mirrors sparse.config.SITES


def parse_variants(value: str) -> list[list[str]]:
    """`intermediate,ffn_input+intermediate` -> [["intermediate"], ["ffn_input", "intermediate"]]."""
    from sparsealign.errors import UserError

    out = [[s.strip() for s in v.split("+") if s.strip()] for v in value.split(",") if v.strip()]
    bad = sorted({s for v in out for s in v} - set(SITE_NAMES))
    if bad or not out or any(len(set(v)) != len(v) or not v for v in out):
        raise UserError(f"--variants {value!r}: {'unknown site ' + repr(bad[0]) if bad else 'malformed'}; "
                        f"sites joined by '+', variants by ',', sites from {', '.join(SITE_NAMES)}")
    return out


def _curve_texts(domains: str | None, calib_file, eval_file, n_calib: int, n_eval: int):
    """[(eval name, calib name, calib texts, eval texts)]: each domain evaluated with the other's calibration."""
    from sparsealign.errors import UserError
    from sparsealign.sparse.texts import load_texts

    names = [d.strip() for d in domains.split(",") if d.strip()]
    if not names or any(d not in DOMAINS for d in names) or len(set(names)) != len(names):
        raise UserError(f"--domains {domains!r}: expected one or two of {', '.join(DOMAINS)}, e.g. mbpp,hh")
    if calib_file or eval_file:
        raise UserError("--domains picks the texts itself; drop --calib-file/--eval-file")
    runs = []
    for d in names:
        other = next((o for o in names if o != d), d)  # one domain alone: disjoint slices of it
        calib = load_texts(other, n_calib)
        runs.append((d, other, calib, load_texts(d, n_eval, skip=n_calib if other == d else 0)))
    return runs


@click.command("curve")
@click.option("--model", "model_dir", required=True,
              help="HF model directory (e.g. stories260K converted with `sparsealign convert llama2c`), a .gguf "
                   "file, or smollm2-135m-instruct.")
@click.option("--sparsity", "sparsity", default="0,0.1,0.2,0.3,0.5,0.7,0.9", show_default=True,
              help="Comma-separated target sparsities.")
@click.option("--modes", default=f"{STATIC},{DYNAMIC}", show_default=True,
              help=f"Comma-separated modes: {', '.join(MODES)}.")
@click.option("--variants", default="intermediate", show_default=True,
              help="Sites thresholded, '+'-joined, one variant per comma: intermediate (|act(gate x)|, CATS), "
                   "ffn_input (FFN hidden-state input, TEAL), attn_input, attn_output; "
                   "e.g. intermediate,ffn_input,ffn_input+intermediate.")
@click.option("--domains", default=None,
              help="Cross-domain curve on real text: evaluate on each of these (mbpp code, hh dialogue), "
                   "calibrated on the other, e.g. mbpp,hh.")
@click.option("--calib-texts", type=click.IntRange(1, 10000), default=24, show_default=True,
              help="Calibration texts (sampled from the dense model, seed 0, unless --domains/--calib-file).")
@click.option("--eval-texts", type=click.IntRange(1, 10000), default=12, show_default=True,
              help="Held-out texts (sampled from the dense model, seed 1, disjoint, unless --domains/--eval-file).")
@click.option("--new-tokens", type=click.IntRange(8, 4096), default=128, show_default=True,
              help="Length of each sampled text in tokens.")
@click.option("--max-length", type=click.IntRange(2, 8192), default=256, show_default=True,
              help="Tokens per text (longer texts are truncated).")
@click.option("--max-tokens", type=click.IntRange(16, 1 << 22), default=4096, show_default=True,
              help="Calibration tokens recorded per layer (memory: tokens x (hidden + FFN width) x 4 B per layer).")
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
def curve(model_dir: str, sparsity: str, modes: str, variants: str, domains: str | None, calib_texts: int,
          eval_texts: int, new_tokens: int, max_length: int, max_tokens: int, calib_file: Path | None,
          eval_file: Path | None, prompt_tokens: int, threads: int, out_dir: Path | None, as_json: bool) -> None:
    """KL(dense || sparse) per token and next-token top-1 agreement versus sparsity, static vs dynamic.

    Calibrates thresholds at each sparsity (for each site variant), then evaluates each mode teacher-forced on
    held-out text.  With --domains, real text: each domain is evaluated with thresholds calibrated on the other.
    Without text options, the dense model samples its own calibration and (disjoint) held-out texts.

    \b
    Examples:
      sparsealign sparsify curve --model smollm2-135m-instruct --domains mbpp,hh \\
          --variants intermediate,ffn_input,ffn_input+intermediate --json
      sparsealign sparsify curve --model models/stories260K-hf --json
    """
    sparsities = parse_floats(sparsity, "--sparsity")
    mode_list = parse_modes(modes)
    variant_list = parse_variants(variants)
    if Path(model_dir).is_dir():
        check_model_dir(Path(model_dir))
    runs_spec = _curve_texts(domains, calib_file, eval_file, calib_texts, eval_texts) if domains else None
    import torch

    from sparsealign.io import atomic_write_json
    from sparsealign.settings import runs_dir
    from sparsealign.sparse.bench.curve import sample_texts, sparsity_curve, write_curve

    torch.set_num_threads(threads)
    model, tokenizer = load_model(model_dir, LoadSettings())
    if runs_spec is None:
        calib = _read_chunks(calib_file) if calib_file else sample_texts(model, tokenizer, calib_texts,
                                                                        new_tokens=new_tokens, seed=0)
        held = _read_chunks(eval_file) if eval_file else sample_texts(model, tokenizer, eval_texts,
                                                                     new_tokens=new_tokens, seed=1)
        runs_spec = [(str(eval_file or "sampled:seed1"), str(calib_file or "sampled:seed0"), calib, held)]
    rows, runs = [], []
    for eval_name, calib_name, calib, held in runs_spec:
        _log(f"evaluating on {eval_name} ({len(held)} texts), calibrated on {calib_name} ({len(calib)} texts)")
        part = sparsity_curve(model, tokenizer, calib, held, sparsities, mode_list, variants=variant_list,
                              prompt_tokens=prompt_tokens, max_length=max_length, max_tokens=max_tokens, log=_log)
        rows += [{"eval_domain": eval_name, "calib_domain": calib_name, **r} for r in part.pop("rows")]
        runs.append({"eval_domain": eval_name, "calib_domain": calib_name, **part})
    name = Path(model_dir).resolve().name if Path(model_dir).is_dir() else Path(model_dir).stem
    out_dir = out_dir or runs_dir() / f"curve-{name}"
    result = {"rows": rows, "runs": runs, "model": str(model_dir), "variants": ["+".join(v) for v in variant_list],
              "max_length": max_length, "threads": threads}
    paths = write_curve(result, out_dir, title=f"{name}: sparse vs dense")
    paths.append(atomic_write_json(out_dir / "texts.json", {f"{r[0]} (calibrated on {r[1]})": {
        "calibration": r[2], "eval": r[3]} for r in runs_spec}))
    result["files"] = [str(p) for p in paths]
    if as_json:
        click.echo(json.dumps(result, sort_keys=True))
        return
    click.echo(f"{'eval':>8} {'sites':>24} {'mode':>8} {'target':>6} {'realized':>8} {'KL nats/tok':>11} "
               f"{'top-1 agree':>11}")
    for r in result["rows"]:
        click.echo(f"{r['eval_domain'][:8]:>8} {r['sites']:>24} {r['mode']:>8} {r['sparsity']:>6.2f} "
                   f"{r['realized_sparsity']:>8.3f} {r['kl_mean']:>11.4f} {r['top1_agreement']:>11.3f}")
    click.echo(f"wrote {', '.join(result['files'])}")


def register(cli: click.Group) -> None:
    """Add `bench` (and `curve`) to the shared `sparsify` group."""
    cli.commands["sparsify"].add_command(bench)
    cli.commands["sparsify"].add_command(curve)
