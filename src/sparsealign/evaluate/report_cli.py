"""`sparsealign eval report --name RUN`: one Markdown report of a run's alignment, sparsity and evaluations.

It reads what the verbs wrote under runs/RUN/ (align/<cell>/metrics.json, eval/mbpp/summary.json,
eval/preference/summary.json) and writes runs/RUN/report.md: dense vs sparse side by side, every figure with its
interval.  Light module: stdlib and click only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def _ci(est: float | None, low: float | None, high: float | None) -> str:
    if est is None:
        return "n/a"
    return f"{est:.4f} [{low:.4f}, {high:.4f}]" if low is not None else f"{est:.4f}"


def _mbpp_lines(s: dict[str, Any]) -> list[str]:
    ci = s.get("pass@1_ci", {})
    sparse_label = "sparse" if s.get("sparsity") else "model"
    lines = ["## MBPP", "", f"{s.get('total')} problems, split {s.get('split')}, prompt format {s.get('format')}, "
             f"extraction {s.get('extract')} (Wilson 95% CIs; difference: paired bootstrap over problems).", "",
             "| run | passed | pass@1 [95% CI] |", "|---|---|---|"]
    dense = s.get("dense")
    if dense:
        dci = dense.get("pass@1_ci", {})
        lines.append(f"| dense | {dense['passed']}/{dense['total']} | "
                     f"{_ci(dense.get('pass@1'), dci.get('low'), dci.get('high'))} |")
    lines.append(f"| {sparse_label} | {s.get('passed')}/{s.get('total')} | "
                 f"{_ci(s.get('pass@1'), ci.get('low'), ci.get('high'))} |")
    diff = s.get("sparse_minus_dense")
    if diff:
        lines += ["", f"sparse - dense: {_ci(diff['estimate'], diff['low'], diff['high'])}, {diff['test']} "
                      f"p = {diff['p']:.3g}"]
    return lines


def _preference_lines(s: dict[str, Any]) -> list[str]:
    lines = ["## Preferences", "", f"{s.get('method')} on {s.get('n_pairs')} held-out pairs of {s.get('data')} "
             "(percentile-bootstrap 95% CIs).", ""]
    dense, metrics = s.get("dense"), s.get("metrics", {})
    head = "| metric | dense | sparse |" if dense else "| metric | model |"
    lines += [head, "|---|---|---|" if dense else "|---|---|"]
    for key, m in metrics.items():
        row = _ci(m.get("estimate"), m.get("low"), m.get("high"))
        if dense:
            d = dense.get(key, {})
            lines.append(f"| {key} | {_ci(d.get('estimate'), d.get('low'), d.get('high'))} | {row} |")
        else:
            lines.append(f"| {key} | {row} |")
    for key, m in (s.get("flip") or {}).items():
        lines.append(f"| flip: {key} | | {_ci(m.get('estimate'), m.get('low'), m.get('high'))} |")
    return lines


def _sparsity_line(summaries: list[dict[str, Any]]) -> list[str]:
    for s in summaries:
        sp = s.get("sparsity")
        if sp:
            return ["## Sparsity", "", f"artifacts {sp['artifacts']}: mode {sp['mode']}, prefill {sp['prefill']}, "
                    f"target {sp.get('target_sparsity')}, realized {sp.get('realized_sparsity', 0):.3f}"]
    return []


def render(root: Path) -> str:
    """The report's Markdown from the run directory (missing parts are left out, and said so)."""
    mbpp = _read(root / "eval" / "mbpp" / "summary.json")
    pref = _read(root / "eval" / "preference" / "summary.json")
    lines = [f"# {root.name}", ""]
    for metrics_path in sorted((root / "align").glob("*/metrics.json")):
        m = json.loads(metrics_path.read_text(encoding="utf-8"))
        lines += [f"aligned: {metrics_path.parent / 'model'} ({metrics_path.parent.name}), train loss "
                  f"{m.get('train_loss', 'n/a')}", ""]
    lines += _sparsity_line([s for s in (mbpp, pref) if s])
    lines += [""] + (_mbpp_lines(mbpp) if mbpp else ["## MBPP", "", "not run (`sparsealign eval mbpp --name RUN`)"])
    lines += [""] + (_preference_lines(pref) if pref else
                     ["## Preferences", "", "not run (`sparsealign eval preference --name RUN`)"])
    return "\n".join(lines).rstrip() + "\n"


@click.command("report")
@click.option("--name", required=True, metavar="RUN", help="Run directory name under the runs dir.")
@click.option("--json", "as_json", is_flag=True, help="Print {report, mbpp, preference} as one JSON object.")
def report_command(name: str, as_json: bool) -> None:
    """Write runs/RUN/report.md from the run's align metrics and `eval mbpp` / `eval preference` summaries
    (made with --name RUN): MBPP and preference metrics, dense vs sparse, each with its CI."""
    from sparsealign.errors import UserError
    from sparsealign.io import atomic_write_text
    from sparsealign.settings import runs_dir

    root = runs_dir() / name
    if not (root / "eval").is_dir():
        raise UserError(f"{root}: no evaluations in this run",
                        hint=f"run `sparsealign eval mbpp ... --name {name}` (or eval preference) first")
    text = render(root)
    atomic_write_text(root / "report.md", text)
    if as_json:
        click.echo(json.dumps({"report": str(root / "report.md"),
                               "mbpp": _read(root / "eval" / "mbpp" / "summary.json"),
                               "preference": _read(root / "eval" / "preference" / "summary.json")}, default=str))
    else:
        click.echo(text + f"\nwritten to {root / 'report.md'}")


def register(cli: click.Group) -> None:
    cli.commands["eval"].add_command(report_command)
