"""Stage 3 — sparsify: PowerInfer-style activation sparsity with static, predictor and dynamic thresholds.

By concern (see docs/sparse.md); modules are imported by name — no package file imports anything, so
`sparsify --help` and the other light commands start without torch:
    modes        the sparsity modes, declared once (MODES: facts each mode has; everything else reads them)
    config       SparsityConfig (what to calibrate), PredictorConfig, ControllerConfig
    artifacts    save_artifacts(artifacts, dir) / load_artifacts(dir): what calibration hands the runtime
    spec         SparsitySpec (--sparsity DIR --mode M --prefill P) and the model identity artifacts carry
    apply        apply_spec: the one way a loaded model is made sparse (checks the artifacts belong to it)
    metrics      pure functions: thresholds, realized sparsity, KL
    texts        load_texts("mbpp" | "hh" | path, n, skip)
    cli, options the `sparsify` verbs and the shared --sparsity/--mode/--prefill flags
    runtime/     applying sparsity: patch (apply_sparsity -> SparsityHandle), state, controller, predictor,
                 batch-1 decode (decode, fastpath, kernels + kernels.c, hugepages)
    calibration/ calibrate (record activations -> thresholds, predictors), profile, run (run_calibrate: the runner
                 `sparsify calibrate` and the study's calibrate cell both call)
    bench/       measuring: quality (KL, tokens/s), curve (quality vs sparsity), speed (decode vs roofline),
                 roofline, teal (the TEAL input-sparsity baseline the benchmarks compare against), cli
"""
