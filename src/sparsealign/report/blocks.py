"""Report blocks (heading, paragraph, table, figure) and their two renderings: Markdown with relative figure links,
and self-contained HTML with the PNGs inlined as base64 data URIs (no external resources, no JavaScript)."""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd


@dataclass
class Block:
    kind: str  # "h1" | "h2" | "h3" | "p" | "pre" | "table" | "figure"
    text: str = ""
    table: pd.DataFrame | None = None
    figure: str = ""  # file name under figures/


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return "–"
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return f"{int(v):,}"
    if isinstance(v, (float, np.floating)):
        v = float(v)
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}" if abs(v) >= 0.01 or v == 0 else f"{v:.2e}"
    return str(v)


def _md_table(df: pd.DataFrame) -> str:
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "| " + " | ".join("---" for _ in df.columns) + " |"
    body = ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *body])


def _html_table(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>"
                   for row in df.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_markdown(blocks: list[Block]) -> str:
    parts = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            parts.append("#" * int(b.kind[1]) + " " + b.text)
        elif b.kind == "p":
            parts.append(b.text)
        elif b.kind == "pre":
            parts.append(f"```yaml\n{b.text.rstrip()}\n```")
        elif b.kind == "table" and b.table is not None:
            parts.append(_md_table(b.table) if not b.table.empty else "_(no rows)_")
        elif b.kind == "figure":
            parts.append(f"![{b.text}](figures/{b.figure})\n\n_{b.text}_")
    return "\n\n".join(parts) + "\n"


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222}table{border-collapse:collapse;margin:1em 0;font-size:13px}th,td{border:1px solid #ccc;
padding:3px 8px;text-align:right}th{background:#f3f3f3}figure{margin:1.5em 0}img{max-width:100%;height:auto}
figcaption{font-size:13px;color:#555}code{background:#f3f3f3;padding:0 3px}"""


def render_html(blocks: list[Block], figure_dir: Path, title: str) -> str:
    parts = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            parts.append(f"<{b.kind}>{html.escape(b.text)}</{b.kind}>")
        elif b.kind == "p":
            parts.append(f"<p>{html.escape(b.text)}</p>")
        elif b.kind == "pre":
            parts.append(f"<pre>{html.escape(b.text)}</pre>")
        elif b.kind == "table" and b.table is not None:
            parts.append(_html_table(b.table) if not b.table.empty else "<p><em>(no rows)</em></p>")
        elif b.kind == "figure":
            data = base64.b64encode((figure_dir / b.figure).read_bytes()).decode("ascii")
            parts.append(f'<figure><img alt="{html.escape(b.text)}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{html.escape(b.text)}</figcaption></figure>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
