"""The review page: one self-contained HTML file (thumbnails as base64 JPEG with the boxes drawn,
the rows as embedded JSON, the script of `review_page.js`) that a clinician opens in any browser,
on a phone too, to accept, reject or edit each suggestion and download ``corrections.csv``
(``stem,field,old,new,note``: one row per change; ``view`` rows hold view names, an empty ``new``
meaning "no view label"; ``boxes`` rows hold the image's whole detection label as YOLO lines
``cls cx cy w h`` joined with ``;``)."""

from __future__ import annotations

import base64
import hashlib
import html
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

GIVEN_BGR = (80, 220, 80)  # green: the boxes in the label file
PRED_BGR = (0, 160, 255)  # orange: the model's boxes (box rows)


def thumbnail(path: str | Path, boxes: np.ndarray, pred: np.ndarray | None = None,
              side: int = 256, quality: int = 72) -> str:
    """A ``data:`` URI: the image shrunk to ``side`` px on its long edge, JPEG, with the given
    boxes (xyxy original pixels) in green and predicted ones (xyxy[, score]) in orange."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f"cannot read image {path}")
    scale = side / max(img.shape[:2])
    img = cv2.resize(img, (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale))),
                     interpolation=cv2.INTER_AREA)
    for arr, color in ((pred, PRED_BGR), (boxes, GIVEN_BGR)):
        if arr is None or len(arr) == 0:
            continue
        for b in np.asarray(arr, np.float64).reshape(len(arr), -1):
            x1, y1, x2, y2 = (int(round(v * scale)) for v in b[:4])
            cv2.rectangle(img, (x1, y1), (x2, y2), color, 2)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"cannot encode a thumbnail of {path}")
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


_CSS = """
body{font:15px/1.4 system-ui,sans-serif;margin:0;background:#f4f4f4;color:#111}
header{position:sticky;top:0;background:#fff;padding:.5em 1em;border-bottom:1px solid #ccc;z-index:1}
h1{font-size:1.1em;margin:.2em 0}.summary{font-size:.85em;color:#444;margin:.2em 0}
.controls{display:flex;flex-wrap:wrap;gap:.4em;align-items:center}
.controls label{font-size:.85em}select,button,input,textarea{font:inherit}
main{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:.7em;padding:.7em}
.card{background:#fff;border:1px solid #ccc;border-radius:6px;padding:.5em;display:flex;gap:.6em}
.card.accept{border-color:#2a2;background:#f3fff3}.card.reject{border-color:#aaa;opacity:.7}
.card.edit{border-color:#e90;background:#fffaf0}
.card img{width:45%;max-width:256px;height:auto;align-self:flex-start;border-radius:4px}
.info{flex:1;min-width:0;font-size:.85em}.stem{font-weight:600;overflow-wrap:anywhere}
.kv span{color:#555;font-size:.85em}.kv pre{margin:0 0 .2em;white-space:pre-wrap;overflow-wrap:anywhere}
.summary.warn{color:#900;font-weight:600}
.sugg{color:#b50}.actions{display:flex;gap:.3em;margin:.3em 0}
.btn{padding:.35em .7em;border:1px solid #999;border-radius:4px;background:#fafafa}
.btn.on.accept{background:#2a2;color:#fff}.btn.on.reject{background:#777;color:#fff}
.btn.on.edit{background:#e90;color:#fff}
textarea,input[type=text]{width:100%;box-sizing:border-box;margin-top:.2em}
#download,#download-trusted{font-weight:600}
h2{font-size:1em;margin:.6em 1em .2em}section#first p{margin:.2em 1em}
section#first .controls{margin:.3em 1em}
.clips{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:.7em;padding:.7em}
.clipcard{background:#fff;border:2px solid #c90;border-radius:6px;padding:.5em}
.clipcard.decided{border-color:#2a2;background:#f3fff3}
.clipcard .thumbs{display:flex;gap:.3em}.clipcard .thumbs img{width:32%;height:auto;border-radius:4px}
.views{display:flex;flex-wrap:wrap;gap:.3em;margin:.3em 0}.btn.on.view{background:#2a2;color:#fff}
@media (max-width:600px){main{grid-template-columns:1fr;padding:.4em}.card{flex-direction:column}
.card img{width:100%;max-width:none}}
"""


def _script() -> str:
    return (Path(__file__).with_name("review_page.js")).read_text(encoding="utf-8")


def review_items(rows: list[dict[str, Any]], boxes_of: dict[str, np.ndarray],
                 max_items: int = 400) -> list[dict[str, Any]]:
    """The rows a reviewer should see, highest score first, at most ``max_items`` per field: view
    rows flagged or with a suggestion that differs from the label, box rows flagged (predicted
    boxes never equal the label to the digit); each with its thumbnail."""
    pick = []
    for field in ("view", "boxes"):
        mine = [r for r in rows if r["field"] == field and (
            r["issue"] or (field == "view" and r["suggested"] != r["given"]))]
        pick += sorted(mine, key=lambda r: -r["score"])[:max_items]
    items = []
    for r in pick:
        pred = np.asarray(r["pred_boxes"]) if r.get("pred_boxes") else None
        items.append({k: r[k] for k in ("field", "rank", "stem", "clip", "given", "suggested",
                                        "clip_majority", "clip_votes", "score", "model_quality",
                                        "model_issue", "clip_issue")}
                     | {"probs": r.get("probs")}
                     | {"key": f"{r['field']}:{r['stem']}",
                        "thumb": thumbnail(r["image"], boxes_of.get(r["stem"], np.zeros((0, 4))),
                                           pred if r["field"] == "boxes" else None)})
    return items


def clip_items(suggested: list[dict[str, Any]], names: list[str],
               paths_of: dict[str, Path]) -> list[dict[str, Any]]:
    """The suggested clips (`medmtl.labelissues.clips`) as the page's first screen: three frames
    of each (first, middle, last), its given and suggested view, P(label wrong)."""
    out = []
    for r in suggested:
        st = r["stems"]
        pick = sorted({0, len(st) // 2, len(st) - 1})
        out.append({"key": f"clip:{r['clip']}", "clip": r["clip"], "patient": r["patient"],
                    "order": r["review_order"], "given": names[r["given"]],
                    "suggested": names[r["suggested"]], "score": round(r["score"], 4),
                    "uncertainty": round(r["uncertainty"], 4), "frames": r["frames"],
                    "posterior": r["posterior"],
                    "thumbs": [thumbnail(paths_of[st[i]], np.zeros((0, 4)), side=160)
                               for i in pick]})
    return out


_CLIPS_HTML = """<section id="first"><h2>Review these {n} clips first</h2>
<p class="summary">Chosen where a decision pays most: the clip's label is likely wrong under the
estimated corruption, the model is unsure, or its appearance disagrees with its label; spread over
patients and classes. One decision labels the whole clip. Choose the view you see (or "can't
tell"), then download trusted.csv and give it to <code>medmtl audit --label-issues --trusted</code>
and <code>medmtl train --trusted</code>.</p>
<div class="controls"><label>reviewer <input id="reviewer" type="text" placeholder="your name">
</label><label>how <input id="how" type="text" value="by eye on the review page, 3 frames">
</label><button id="download-trusted" type="button">Download trusted.csv</button>
<span id="trusted-count"></span></div>
<div id="clips" class="clips"></div></section>
<h2 class="all">All flagged rows</h2>
"""


def write_review_page(path: Path, items: list[dict[str, Any]], cls_names: list[str],
                      title: str, summary_lines: list[str],
                      clips: list[dict[str, Any]] | None = None,
                      warnings: list[str] | None = None) -> Path:
    """Write the page; ``summary_lines`` are shown under the title, ``warnings`` (e.g. models
    too weak for their flags to mean much) after them in red; ``clips`` (`clip_items`) lead it
    as the suggested review list."""
    clips = clips or []
    data = {"items": items, "clips": clips, "cls_names": list(cls_names),
            "page_id": hashlib.sha1((title + json.dumps([i["key"] for i in items + clips])).encode())
            .hexdigest()[:12]}
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    opts = "".join(f'<option value="{v}">{t}</option>' for v, t in
                   (("score-desc", "score, highest first"), ("score-asc", "score, lowest first"),
                    ("clip", "clip")))
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{_CSS}</style></head>
<body><header><h1>{html.escape(title)}</h1>
{"".join(f'<p class="summary">{html.escape(s)}</p>' for s in summary_lines)}
{"".join(f'<p class="summary warn">Warning: {html.escape(w)}</p>' for w in warnings or [])}
<p class="summary">Green boxes: the label file; orange: the model's. Accept takes the suggestion,
Edit lets you type your own; decisions stay in this browser until you download them.</p>
<div class="controls">
<label>clip <select id="clip"><option value="">all clips</option></select></label>
<label>field <select id="field"><option value="">all</option><option value="view">view</option>
<option value="boxes">boxes</option></select></label>
<label>show <select id="state"><option value="">all</option><option value="open">undecided</option>
<option value="accept">accepted</option><option value="reject">rejected</option>
<option value="edit">edited</option></select></label>
<label>sort <select id="sort">{opts}</select></label>
<button id="download" type="button">Download corrections.csv</button><span id="count"></span>
</div></header>
{_CLIPS_HTML.format(n=len(clips))}<main id="rows"></main>
<script type="application/json" id="data">{payload}</script>
<script>{_script()}</script>
</body></html>
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


__all__ = ["clip_items", "review_items", "thumbnail", "write_review_page"]
