"""The study's time-left estimate: cells sized in their stage's units from the config, priced at the seconds per
unit the same stage's finished cells took (against the formula), and the progress line shows it."""

from __future__ import annotations

from sparsealign.study.cells import AlignCell, EvalCell, expand
from sparsealign.study.config import load_study_config
from sparsealign.study.progress import (
    LIKELIHOOD_WEIGHT,
    PAIR_WEIGHT,
    RATIONALE_WEIGHT,
    Eta,
    cell_units,
    format_left,
)


def test_eval_cells_are_sized_by_what_they_generate_and_score() -> None:
    cfg = load_study_config(None, "real")
    cells = {c.key: c for c in expand(cfg) if isinstance(c, EvalCell)}
    base_dense = cells["smollm2-135m/base/f1.000/dense/0.00"]
    dpo_sparse = cells["smollm2-135m/dpo/f1.000/dynamic/0.50"]
    dpo_dense = cells["smollm2-135m/dpo/f1.000/dense/0.00"]
    hh, uf, code = 600, 500, 24 * 0.2
    # base: 500 MBPP tasks generated, 500 references scored, HH + UF + code pairs
    assert cell_units(base_dense, cfg) == 500 + LIKELIHOOD_WEIGHT * 500 + PAIR_WEIGHT * (hh + uf + code) + 1
    # base sparse: the whole split at the mbpp_base_full_targets (0.3), the first 200 tasks at 0.5; HH + UF;
    # with sparse_mbpp_targets=[0.3] no programs at 0.5
    for target, tasks in (("0.30", 500), ("0.50", 200)):
        cell = cells[f"smollm2-135m/base/f1.000/static/{target}"]
        assert cell.mbpp_full == (tasks == 500)
        assert cell_units(cell, cfg) == tasks + LIKELIHOOD_WEIGHT * 500 + PAIR_WEIGHT * (hh + uf) + 1
    cut = {c.key: c for c in expand(load_study_config(None, "real", ["evaluation.sparse_mbpp_targets=[0.3]"]))
           if isinstance(c, EvalCell)}
    assert [k for k, c in cut.items() if c.method == "base" and c.generates_mbpp] == [
        "smollm2-135m/base/f1.000/dense/0.00", "smollm2-135m/base/f1.000/static/0.30",
        "smollm2-135m/base/f1.000/dynamic/0.30"]
    # an aligned model's sparse cell: no generation (sparse_mbpp: base), no UF (base_only_sets), HH only
    assert cell_units(dpo_sparse, cfg) == LIKELIHOOD_WEIGHT * 500 + PAIR_WEIGHT * hh + 1
    assert cell_units(dpo_dense, cfg) == 200 + LIKELIHOOD_WEIGHT * 500 + PAIR_WEIGHT * (hh + code) + 1
    align = {c.method: c for c in expand(cfg) if isinstance(c, AlignCell)}
    assert cell_units(align["rdpo"], cfg) == RATIONALE_WEIGHT * cell_units(align["dpo"], cfg)


def test_time_left_prices_each_stage_at_its_own_measured_rate() -> None:
    eta = Eta({"eval:a": ("eval", 100.0), "eval:b": ("eval", 300.0), "align:x": ("align", 50.0),
               "calibrate:c": ("calibrate", 10.0)})
    assert eta.seconds_left() is None and format_left(None) == "left: estimating"
    eta.units["pretrain:f"] = ("pretrain", 1.0)
    eta.finished("pretrain:f", 0.05)  # a cached lookup: no rate to extrapolate from
    assert eta.seconds_left() is None
    eta.finished("eval:a", 200.0)  # 2 s per eval unit
    # a stage's units mean nothing in another stage: align and calibrate are named, not priced at eval's rate
    assert abs(eta.seconds_left() - 300 * 2) < 1e-9 and eta.unpriced() == ["align", "calibrate"]
    eta.finished("align:x", 25.0)  # align priced now, nothing of it left
    assert abs(eta.seconds_left() - 300 * 2) < 1e-9 and eta.unpriced() == ["calibrate"]
    eta.finished("eval:b", None)  # failed: no time recorded, nothing left of it
    assert eta.seconds_left() == 0 and eta.unpriced() == ["calibrate"]
    assert format_left(4000) == "left ~1h07m" and format_left(125) == "left ~2m"
    assert format_left(600, eta.unpriced()) == "left > ~10m + calibrate (unpriced)"
    assert format_left(20, ["eval", "calibrate"]) == "left: eval, calibrate (unpriced)"  # no "~0m +"


def test_the_progress_line_shows_the_time_left_from_the_ledger(tmp_path, capsys) -> None:
    from sparsealign.study.executor import run_local

    cfg = load_study_config(None, "real")
    cells = expand(cfg)[:3]  # pretrain, pairs, an align cell: each depends only on the ones before
    counts = run_local(cells, tmp_path / "ledger.sqlite", "h", lambda cell: {}, progress=True,
                       eta=Eta.of(cells, cfg))
    assert counts == {"done": 3, "skipped": 0, "failed": 0}
    err = capsys.readouterr().err
    assert "left: estimating" in err and "3/3 cells" in err and "left ~" not in err  # instant cells price nothing
    eta = Eta.of(cells, cfg)
    eta.spent["align"] = [600.0, 100.0]  # 6 s per align unit, as a resumed run knows from its ledger
    run_local(cells, tmp_path / "ledger2.sqlite", "h", lambda cell: {}, progress=True, eta=eta)
    err = capsys.readouterr().err
    # the align cells at 6 s per unit; pretrain and pairs have no rate yet and are named
    align_units = sum(u for stage, u in Eta.of(cells, cfg).units.values() if stage == "align")
    assert format_left(align_units * 6, ["pretrain", "pairs"]) in err and align_units * 6 > 60 * 10
