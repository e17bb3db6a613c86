"""Stage 3 — sparsify: PowerInfer-style activation sparsity with static, predictor and dynamic thresholds.

Modules (see docs/sparse.md), imported by name — this package file imports nothing, so `sparsify --help` and the
other light commands start without torch:
    config       SparsityConfig (what to calibrate), PredictorConfig, ControllerConfig
    calibration  record_activations, calibrate(model, tokenizer, texts, SparsityConfig) -> SparsityArtifacts
    artifacts    save_artifacts(artifacts, dir) / load_artifacts(dir)
    patch        apply_sparsity(model, artifacts, mode, prefill) -> SparsityHandle (remove, trace, stats, reset)
    quality      evaluate_sparsity, decode_tokens_per_s
    profile      build_profile / save_profile (hot/cold profile), plot_trace
    texts        load_texts("mbpp" | "hh" | path, n, skip)
    run          run_calibrate: the calibrate stage's runner (`sparsify calibrate` and the study)
"""
