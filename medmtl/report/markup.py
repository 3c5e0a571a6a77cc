"""The report's blocks rendered as Markdown and as one self-contained HTML page (images inline,
a viewport tag and sideways-scrolling tables, so it reads on a phone)."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from typing import Any

from medmtl.report.collect import METRIC_BY_KEY

Block = tuple[Any, ...]


def fmt(key: str, v: float | None) -> str:
    """One number, formatted by the metric's kind."""
    if v is None:
        return "n/a"
    if not math.isfinite(v):
        return str(v)  # "nan" / "inf": a diverged run shows as such, not as missing
    kind = METRIC_BY_KEY[key].kind if key in METRIC_BY_KEY else "metric"
    if kind == "params":
        return f"{v / 1e6:.2f}M"
    if kind == "gflops":
        return f"{v:.2f}"
    if kind in ("seconds", "ms", "mb", "rate"):
        return f"{v:.1f}"
    return f"{v:.3f}"


def fmt_ms(entry: dict[str, Any], key: str) -> str:
    cell = entry["metrics"][key]
    if cell["mean"] is None:
        return "n/a"
    if cell["std"] is None:  # one seed: the banner says so once, not '± —' in every cell
        return fmt(key, cell["mean"])
    return f"{fmt(key, cell['mean'])} ± {fmt(key, cell['std'])}"


def _esc_md(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(blocks: Sequence[Block]) -> str:
    out: list[str] = []
    for blk in blocks:
        if blk[0] == "h":
            out.append("#" * blk[1] + " " + blk[2])
        elif blk[0] == "p":
            out.append(blk[1])
        elif blk[0] == "banner":
            out.append(f"> **Note:** {blk[1]}")
        elif blk[0] == "ul":
            out.append("\n".join(f"- {item}" for item in blk[1]))
        elif blk[0] == "table":
            lines = ["| " + " | ".join(_esc_md(h) for h in blk[1]) + " |",
                     "|" + "---|" * len(blk[1])]
            lines += ["| " + " | ".join(_esc_md(c) for c in row) + " |" for row in blk[2]]
            out.append("\n".join(lines) if blk[2] else "(no data)")
        elif blk[0] == "img":
            out.append(f"![{blk[1]}]({blk[2].as_posix()})\n\n*{blk[1]}*")
    return "\n\n".join(out) + "\n"


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1200px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45;overflow-wrap:anywhere}
td,th{overflow-wrap:normal}
table{border-collapse:collapse;margin:0.8em 0;font-size:0.88em}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f0f3f7}td:first-child,th:first-child{text-align:left;font-weight:600}
tr:nth-child(even) td{background:#fafafa}figure{margin:1em 0}
img{max-width:100%;border:1px solid #ddd}figcaption{font-size:0.85em;color:#555}
h2{border-bottom:1px solid #ddd;padding-bottom:0.2em;margin-top:1.6em}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch;max-width:100%}
.banner{background:#fff4d6;border-left:4px solid #e0a800;padding:0.6em 0.9em}
@media (max-width:600px){body{margin:0.5em auto;padding:0 0.6em}table{font-size:0.8em}}"""


def to_html(blocks: Sequence[Block]) -> str:
    e = html.escape
    body: list[str] = []
    title = "medmtl report"
    for blk in blocks:
        if blk[0] == "h":
            title = blk[2] if blk[1] == 1 else title
            body.append(f"<h{blk[1]}>{e(blk[2])}</h{blk[1]}>")
        elif blk[0] == "p":
            body.append(f"<p>{e(blk[1])}</p>")
        elif blk[0] == "banner":
            body.append(f'<p class="banner">{e(blk[1])}</p>')
        elif blk[0] == "ul":
            body.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in blk[1]) + "</ul>")
        elif blk[0] == "table":
            if not blk[2]:
                body.append("<p>(no data)</p>")
                continue
            head = "".join(f"<th>{e(h)}</th>" for h in blk[1])
            rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>"
                           for row in blk[2])
            body.append(f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
                        f"<tbody>{rows}</tbody></table></div>")
        elif blk[0] == "img":
            data = base64.b64encode(blk[3].read_bytes()).decode("ascii")
            body.append(f'<figure><img alt="{e(blk[1])}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{e(blk[1])}</figcaption></figure>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{e(title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")
