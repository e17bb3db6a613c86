"""`sparsealign sparsify profile|calibrate|evaluate|generate` (click + stdlib at import time; torch inside)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from sparsealign.models.loading import SHORT_NAMES, LoadSettings, load_model, resolve_model
from sparsealign.output import emit
from sparsealign.sparse.modes import DYNAMIC, STATIC
from sparsealign.sparse.options import mode_option


def _default_out(model: str, out: str | None, flag: str = "--out") -> Path:
    """Artifacts live beside the model (MODEL/sparsity) unless a directory is given; a short name or a .gguf file
    gets runs/<name>/sparsity (its dequantized copy sits in the hidden user cache, no place for a user's files)."""
    from sparsealign.errors import UserError
    from sparsealign.settings import runs_dir

    if out:
        return Path(out)
    if Path(model).is_dir():
        return Path(model) / "sparsity"
    name = model.strip().lower()
    if name in SHORT_NAMES or name.endswith(".gguf"):
        return runs_dir() / (name if name in SHORT_NAMES else Path(model).stem) / "sparsity"
    resolve_model(model)  # a path that is no model fails here, naming it
    raise UserError(f"{model} is a hub id, so there is no default place for artifacts", hint=f"pass {flag} DIR")


def _config(config: str | None, overrides: tuple[str, ...], target: float | None):
    from sparsealign.config import load_config
    from sparsealign.sparse.config import SparsityConfig

    extra = [] if target is None else [f"target_sparsity={target}"]  # the flag wins over the YAML file
    return load_config(SparsityConfig, config, [*overrides, *extra])


def model_opts(fn):
    """`--model M` (the convention of every verb); the old positional MODEL still works."""
    fn = click.argument("model_arg", required=False, metavar="[MODEL]")(fn)
    return click.option("--model", "model_opt", default=None, metavar="PATH",
                        help="Model directory (save_pretrained) or hub id.")(fn)


def _pick_model(model_opt: str | None, model_arg: str | None) -> str:
    from sparsealign.errors import UserError

    if model_opt and model_arg and model_opt != model_arg:
        raise UserError(f"two models given ({model_arg} and --model {model_opt})", hint="pass only --model PATH")
    model = model_opt or model_arg
    if not model:
        raise UserError("missing --model", hint="add --model PATH (a saved HF model directory or a hub id)")
    return model


artifacts_opt = click.option("--sparsity", "--artifacts", "artifacts", default=None, metavar="DIR",
                             help="Artifacts directory from `sparsify calibrate` (default MODEL/sparsity; runs/NAME/"
                                  "sparsity for a short name or .gguf).")
texts_opt = click.option("--texts", "source", default="mbpp", show_default=True,
                         help="Text source: mbpp (code), hh (dialogue), hh-harmless, or a .jsonl/.txt path.")
n_opt = click.option("-n", "--n", "n", type=click.IntRange(1), default=64, show_default=True,
                     help="Number of texts to use.")
skip_opt = click.option("--skip", type=click.IntRange(0), default=0, show_default=True,
                        help="Skip the first texts of the source (keep calibration and evaluation disjoint).")
json_opt = click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
config_opts = [
    click.option("--config", type=click.Path(dir_okay=False), default=None, help="SparsityConfig YAML file."),
    click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                 help="Override a config field, e.g. --set predictor.enabled=true (repeatable)."),
    click.option("--target", "--target-sparsity", "target", type=click.FloatRange(0, 1, max_open=True), default=None,
                 help="Target sparsity (shortcut for --set target_sparsity=...)."),
]


def _with(options):
    def deco(fn):
        for opt in reversed(options):
            fn = opt(fn)
        return fn
    return deco


def register(cli: click.Group) -> None:
    group = cli.commands["sparsify"]
    assert isinstance(group, click.Group)

    @group.command("profile", short_help="Per-neuron firing frequency / magnitude profile (hot/cold split, plot).")
    @model_opts
    @texts_opt
    @n_opt
    @skip_opt
    @_with(config_opts)
    @click.option("--out", default=None, help="Output directory (default MODEL/sparsity/profile).")
    @json_opt
    def profile(model_opt, model_arg, source, n, skip, config, overrides, target, out, as_json):
        """Record FFN activations of MODEL on calibration texts and write profile.safetensors, profile.json
        and profile.png (neurons sorted by how often |act(gate x)| exceeds the layer's threshold at the target
        sparsity; hot = fires on >= hot_fraction of tokens)."""
        from sparsealign.sparse.calibration.calibrate import calibrate, record_activations
        from sparsealign.sparse.calibration.profile import build_profile, save_profile
        from sparsealign.sparse.texts import load_texts

        model = _pick_model(model_opt, model_arg)
        cfg = _config(config, overrides, target)
        out_dir = Path(out) if out else _default_out(model, None) / "profile"
        m, tok = load_model(model, LoadSettings())
        rec = record_activations(m, tok, load_texts(source, n, skip), max_length=cfg.max_length,
                                 max_tokens=cfg.max_tokens, sites=cfg.sites)
        art = calibrate(m, tok, [], cfg.model_copy(update={"allocation": "uniform"}), recording=rec)
        prof = build_profile(rec, art.thresholds, cfg.hot_fraction)
        files = save_profile(prof, out_dir)
        result = {"out": str(out_dir), "files": [str(f) for f in files], "tokens": prof["tokens"],
                  "layers": prof["layers"]}
        emit(result, as_json, [f"profile of {prof['tokens']} tokens -> {out_dir}"] + [
            f"  {r['layer']}: hot {r['hot_neurons']:.1%} carry {r['hot_firing_share']:.1%} of firings; "
            f"80% of firings in {r['neurons_for_80pct_firings']:.1%} of neurons" for r in prof["layers"]])

    @group.command("calibrate", short_help="Calibrate thresholds (+ greedy allocation, predictors); save artifacts.")
    @model_opts
    @texts_opt
    @n_opt
    @skip_opt
    @_with(config_opts)
    @click.option("--out", default=None, help="Artifacts directory (default MODEL/sparsity; runs/NAME/sparsity for a "
                                              "short name or .gguf file; printed).")
    @json_opt
    def calibrate_cmd(model_opt, model_arg, source, n, skip, config, overrides, target, out, as_json):
        """Per-layer thresholds on |act(gate x)| at the target sparsity (empirical quantile), optional TEAL-style
        greedy allocation (--set allocation=greedy) and low-rank predictors (--set predictor.enabled=true).
        Writes sparsity.safetensors + sparsity.json, and the activation profile beside them."""
        from sparsealign.sparse.calibration.run import CalibrateRunConfig, run_calibrate
        from sparsealign.sparse.texts import load_texts

        model = _pick_model(model_opt, model_arg)
        cfg = _config(config, overrides, target)
        out_dir = _default_out(model, out)
        load_texts(source, n, skip)  # a bad text source fails before the model loads
        run_cfg = CalibrateRunConfig(model=model, texts=source, n=n, skip=skip, sparsity=cfg)
        art = run_calibrate(run_cfg, out_dir, loaded=load_model(model, LoadSettings()))[cfg.target_sparsity]
        result = {"out": str(out_dir), "thresholds": art.thresholds, "layer_sparsity": art.layer_sparsity,
                  "calibration": art.calibration}
        emit(result, as_json, [f"artifacts -> {out_dir}",
                                f"  thresholds: {', '.join(f'{t:.4g}' for t in art.thresholds)}",
                                f"  layer sparsity: {', '.join(f'{s:.2f}' for s in art.layer_sparsity)}"])

    @group.command("evaluate", short_help="KL, top-1 agreement, realized sparsity, FLOPs skipped (and tokens/s).")
    @model_opts
    @artifacts_opt
    @texts_opt
    @n_opt
    @skip_opt
    @mode_option(default=STATIC)
    @click.option("--prefill", type=click.Choice(["dense", "sparse"]), default="dense", show_default=True,
                  help="Whether the prompt positions (--prompt-tokens) run dense or sparse.")
    @click.option("--prompt-tokens", type=click.IntRange(0), default=0, show_default=True,
                  help="Leading tokens of each text treated as the prompt.")
    @click.option("--frozen", is_flag=True, help="Dynamic mode with the controller frozen (== static).")
    @click.option("--speed", is_flag=True, help="Also time greedy decode (dense vs sparse tokens/s).")
    @click.option("--out", default=None, type=click.Path(dir_okay=False), help="Also write the result JSON here.")
    @click.option("--plot", default=None, type=click.Path(dir_okay=False),
                  help="Write a PNG of per-layer realized sparsity over the processed tokens.")
    @json_opt
    def evaluate_cmd(model_opt, model_arg, artifacts, source, n, skip, mode, prefill, prompt_tokens, frozen, speed,
                     out, plot, as_json):
        """Run MODEL dense and sparse over texts (teacher forcing) and report quality and sparsity metrics."""
        from sparsealign.io import atomic_write_json
        from sparsealign.sparse.artifacts import load_artifacts
        from sparsealign.sparse.bench.quality import evaluate_sparsity
        from sparsealign.sparse.spec import check_artifacts_model
        from sparsealign.sparse.texts import load_texts

        model = _pick_model(model_opt, model_arg)
        art_dir = artifacts or _default_out(model, None, "--sparsity")
        art = load_artifacts(art_dir)
        texts = load_texts(source, n, skip)
        m, tok = load_model(model, LoadSettings())
        check_artifacts_model(art, m, str(art_dir))
        ctl = art.config.controller.model_copy(update={"frozen": True}) if frozen else None
        res = evaluate_sparsity(m, tok, texts, art, mode, prefill, prompt_tokens=prompt_tokens,
                                max_length=art.config.max_length, controller=ctl, measure_speed=speed,
                                per_token=plot is not None)
        if plot:
            from sparsealign.sparse.calibration.profile import plot_trace

            plot_trace(res.pop("trace"), plot, target=art.config.target_sparsity)
            res.pop("kl_per_token")
        if out:
            atomic_write_json(out, res)
        lines = [f"{mode} (prefill {prefill}) on {res['tokens']} tokens: realized sparsity "
                 f"{res['realized_sparsity']:.3f} (target {res['target_sparsity']}), FFN FLOPs skipped "
                 f"{res['flops_skipped']:.3f}, KL {res['kl_mean']:.4g}, top-1 agreement {res['top1_agreement']:.3f}"]
        if speed:
            lines.append(f"decode: dense {res['dense_tokens_per_s']:.1f} tok/s, sparse "
                         f"{res['sparse_tokens_per_s']:.1f} tok/s ({res['speedup']:.2f}x)")
        emit(res, as_json, lines)

    @group.command("generate", short_help="Generate with a sparse model; print text and realized sparsity.")
    @model_opts
    @artifacts_opt
    @click.option("--prompt", required=True, help="Prompt text.")
    @mode_option(default=DYNAMIC)
    @click.option("--prefill", type=click.Choice(["dense", "sparse"]), default="dense", show_default=True,
                  help="Prompt computed dense (default) or sparse.")
    @click.option("--max-new-tokens", type=click.IntRange(1), default=64, show_default=True)
    @json_opt
    def generate_cmd(model_opt, model_arg, artifacts, prompt, mode, prefill, max_new_tokens, as_json):
        """Greedy generation under sparsity; reports the per-layer realized sparsity of the decoded tokens."""
        import torch

        from sparsealign.sparse.artifacts import load_artifacts
        from sparsealign.sparse.runtime.patch import apply_sparsity
        from sparsealign.sparse.spec import check_artifacts_model

        model = _pick_model(model_opt, model_arg)
        art_dir = artifacts or _default_out(model, None, "--sparsity")
        art = load_artifacts(art_dir)
        m, tok = load_model(model, LoadSettings())
        check_artifacts_model(art, m, str(art_dir))
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        with apply_sparsity(m, art, mode, prefill) as handle, torch.no_grad():
            gen = m.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
            stats = handle.stats()
        text = tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)
        res = {"text": text, "new_tokens": int(gen.shape[1] - ids.shape[1]), **stats, "apply_info": handle.info}
        emit(res, as_json, [text, f"[{mode}, prefill {prefill}] realized sparsity "
                                   f"{stats.get('realized_sparsity', 0):.3f}"])
        sys.stdout.flush()
