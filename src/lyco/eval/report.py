"""Outputs of a run: ``results.csv`` / ``results.json`` (every number), ``manifest.json`` and a self-contained
``report.html`` (tables of raw and rank-normalised metrics, the paper's scatter plots, image grids with the base
model and each checkpoint side by side; images and plots are inline data URIs).

Every number cell of the HTML carries ``data-key`` (see :func:`row_key`), ``data-field`` (value | score) and
``data-value`` (the exact number), so the report can be checked against the CSV.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from ..io.atomic import write_atomic
from .config import EvalConfig
from .metrics import PROMPT_TYPE_LABELS, PROMPT_TYPES, get_metric
from .plan import Outcome
from .plots import paper_axes, scatter_png
from .rank import COLUMNS, Row

log = logging.getLogger("lyco")

KEY_FIELDS = ("level", "category", "class", "subclass", "checkpoint", "metric", "encoder", "resize", "prompt_type")

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em;color:#222;max-width:1400px}
h1{font-size:1.5em}h2{font-size:1.25em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
h3{font-size:1.05em;margin-top:1.2em}
table{border-collapse:collapse;margin:.4em 0 1em;font-size:.82em}
th,td{border:1px solid #ddd;padding:.25em .45em;text-align:left;vertical-align:top}
th{background:#f4f4f4;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.best{background:#e3f4e3}.note{color:#666;font-size:.85em}
.grid td{padding:2px;text-align:center}.grid img{display:block;image-rendering:pixelated}
.plots{display:flex;flex-wrap:wrap;gap:12px}.plots figure{margin:0}
.prompt{font-size:.75em;color:#555;max-width:12em}code{font-size:.9em}
"""


def fmt(v: float) -> str:
    return "–" if v is None or math.isnan(v) else f"{v:.4g}"


def row_key(d: Row | dict[str, Any]) -> str:
    """A stable identifier of a result row: its key fields joined by ``|``."""
    dd = d.as_dict() if isinstance(d, Row) else d
    return "|".join(str(dd[k]) for k in KEY_FIELDS)


def _num(v: float) -> str:
    return "nan" if math.isnan(v) else repr(float(v))


# ------------------------------------------------------------------------------------------------- CSV / JSON
def write_csv(rows: Iterable[Row], path: Path) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
    w.writeheader()
    for r in rows:
        d = r.as_dict()
        d["value"], d["score"] = _num(r.value), _num(r.score)
        w.writerow(d)
    write_atomic(path, buf.getvalue())


def read_csv(path: Path) -> list[Row]:
    with open(path, newline="", encoding="utf-8") as f:
        return [Row.from_dict(d) for d in csv.DictReader(f)]


def _json_num(v: float) -> float | None:
    return None if math.isnan(v) else float(v)


def write_json(rows: Sequence[Row], manifest: dict[str, Any], path: Path) -> None:
    data = {"manifest": manifest,
            "rows": [{**r.as_dict(), "value": _json_num(r.value), "score": _json_num(r.score)} for r in rows]}
    write_atomic(path, json.dumps(data, indent=1, sort_keys=False))


# ------------------------------------------------------------------------------------------------- HTML parts
def _columns(rows: Sequence[Row]) -> list[tuple[str, str, str, str]]:
    order = {m: i for i, m in enumerate(("image_similarity", "scd", "text_similarity", "vendi", "style_loss",
                                         "preservation_similarity", "style_similarity", "fid", "kid"))}
    cols = {r.column for r in rows}
    return sorted(cols, key=lambda c: (order.get(c[0], 99), PROMPT_TYPES.index(c[3]) if c[3] in PROMPT_TYPES else 9,
                                       c[1], c[2]))


def _col_header(c: tuple[str, str, str, str]) -> str:
    metric, enc, resize, ptype = c
    m = get_metric(metric)
    arrow = "↑" if m.higher_is_better else "↓"
    encs = f"{enc}-{resize}" if resize else enc
    return (f"<th title=\"{html.escape(metric)}\">{html.escape(m.display)} {arrow}<br>"
            f"<span class=note>{html.escape(ptype)} · {html.escape(encs)}</span></th>")


def _table(rows: Sequence[Row], field: str, checkpoints: Sequence[str]) -> str:
    """Rows = checkpoints, columns = metric columns, cells = ``field`` of the row (value or score)."""
    cols = _columns(rows)
    cell = {(r.checkpoint, r.column): r for r in rows}
    best: dict[tuple, float] = {}
    for c in cols:
        vals = [getattr(cell[(ck, c)], field) for ck in checkpoints if (ck, c) in cell]
        vals = [v for v in vals if not math.isnan(v)]
        if len(vals) > 1:
            best[c] = max(vals) if (field == "score" or get_metric(c[0]).higher_is_better) else min(vals)
    out = ["<table><tr><th>checkpoint</th>" + "".join(_col_header(c) for c in cols) + "</tr>"]
    for ck in checkpoints:
        if not any((ck, c) in cell for c in cols):
            continue
        tds = []
        for c in cols:
            r = cell.get((ck, c))
            if r is None:
                tds.append("<td class=num>–</td>")
                continue
            v = getattr(r, field)
            cls = "num best" if c in best and v == best[c] else "num"
            tds.append(f"<td class=\"{cls}\" data-key=\"{html.escape(row_key(r))}\" data-field=\"{field}\" "
                       f"data-value=\"{_num(v)}\">{fmt(v)}</td>")
        out.append(f"<tr><th>{html.escape(ck)}</th>{''.join(tds)}</tr>")
    out.append("</table>")
    return "".join(out)


def _thumb(path: Path, size: int) -> str:
    with Image.open(path) as img:
        im = img.convert("RGB")
        scale = size / max(im.size)
        if scale != 1:   # small images are enlarged without smoothing, large ones shrunk smoothly
            im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                           Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _grids(cfg: EvalConfig, outcome: Outcome) -> str:
    plan, n = outcome.plan, cfg.report.grid_images
    if n == 0:
        return ""
    parts = ["<h2 id=grids>Images</h2><p class=note>Same prompt and seed in each column: the base model and every "
             "checkpoint side by side.</p>"]
    for leaf in plan.leaves:
        parts.append(f"<h3>{html.escape(leaf.id)} <span class=note>— {html.escape(leaf.descriptor)}</span></h3>")
        if leaf.images:
            thumbs = "".join(f"<td><img src=\"{_thumb(p, cfg.report.thumb_size)}\" alt=\"dataset {i}\"></td>"
                             for i, p in enumerate(leaf.images[:n]))
            parts.append(f"<table class=grid><tr><th>dataset</th>{thumbs}</tr></table>")
        for ptype in PROMPT_TYPES:
            if ptype not in leaf.prompt_sets:
                continue
            variants = [v for v in plan.variants if (v.name, leaf.id, ptype) in plan.sets]
            limit = cfg.report.grid_checkpoints
            if limit is not None:
                variants = [v for v in variants if v.is_base] + [v for v in variants if not v.is_base][:limit]
            base_jobs = plan.sets.get(("base", leaf.id, ptype), [])
            picks = _spread(len(base_jobs), n)
            head = "".join(f"<td class=prompt title=\"{html.escape(base_jobs[k].prompt)}\">"
                           f"{html.escape(_short(base_jobs[k].prompt))}<br>seed {base_jobs[k].seed}</td>"
                           for k in picks)
            rows = [f"<tr><th>{html.escape(PROMPT_TYPE_LABELS[ptype])}</th>{head}</tr>"]
            for v in variants:
                jobs = plan.sets[(v.name, leaf.id, ptype)]
                cells = "".join(f"<td><img src=\"{_thumb(jobs[k].path(cfg.cache_dir), cfg.report.thumb_size)}\" "
                                f"alt=\"{html.escape(v.name)} {ptype} {k}\" "
                                f"title=\"{html.escape(jobs[k].prompt)}\"></td>"
                                for k in picks if k < len(jobs))
                rows.append(f"<tr><th>{html.escape(v.name)}</th>{cells}</tr>")
            parts.append("<table class=grid>" + "".join(rows) + "</table>")
    return "".join(parts)


def _spread(total: int, n: int) -> list[int]:
    """n image indices spread over the set (one per prompt where possible)."""
    if total <= n:
        return list(range(total))
    return sorted({round(i * (total - 1) / max(1, n - 1)) for i in range(n)})


def _short(s: str, limit: int = 60) -> str:
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _plots(cfg: EvalConfig, rows: Sequence[Row], use_scores: bool) -> str:
    if not cfg.report.plots:
        return ""
    enc = cfg.metrics.image_encoders[0]
    resize = cfg.metrics.dataset_resize[0]
    field = "score" if use_scores else "value"
    parts = ["<h2 id=plots>Trade-offs</h2><p class=note>Each point: a configuration averaged over seeds × classes; "
             f"bars: standard error. Axes: {'rank-normalised scores (1 = best)' if use_scores else 'raw values'}.</p>"]
    class_rows = [r for r in rows if r.level == "class"]
    for cat in sorted({r.category for r in class_rows}):
        figs = []
        for x, y in paper_axes(enc, resize):
            png = scatter_png(class_rows, cat, x, y, field)
            if png:
                uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
                figs.append(f"<figure><img src=\"{uri}\" alt=\"{html.escape(cat)}: {html.escape(y.label())} vs "
                            f"{html.escape(x.label())}\"></figure>")
        if figs:
            parts.append(f"<h3>{html.escape(cat)}</h3><div class=plots>{''.join(figs)}</div>")
    return "".join(parts) if len(parts) > 1 else ""


def _summary(cfg: EvalConfig, outcome: Outcome) -> str:
    m = outcome.manifest
    s = m.get("settings", {})
    items = [
        ("base model", m.get("base", "")),
        ("checkpoints", ", ".join(f"{c['name']} (×{c['multiplier']:g})" for c in m.get("checkpoints", [])) or "none"),
        ("sampler", f"{s.get('sampler')} · {s.get('steps')} steps · CFG {s.get('guidance_scale')} · "
                    f"{s.get('width')}×{s.get('height')} · negative {s.get('negative_prompt')!r}"),
        ("seeds", f"image k of every prompt set: seed {cfg.generation.seed_start} + k"),
        ("backbones", ", ".join(f"{k}: {v}" for k, v in m.get("backbones", {}).items())),
        ("style-loss taps", cfg.metrics.vgg_taps),
        ("text processing", f"table {cfg.metrics.text_table}, legacy {cfg.metrics.legacy_text_processing}"),
        ("versions", f"lyco {m.get('lyco')}, torch {m.get('torch')}, diffusers {m.get('diffusers')}, "
                     f"transformers {m.get('transformers')}"),
    ]
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in items)
    return f"<table>{body}</table>"


def _glossary(cfg: EvalConfig) -> str:
    rows = "".join(f"<tr><th>{html.escape(m.display)} <code>{html.escape(m.name)}</code></th>"
                   f"<td>{'↑' if m.higher_is_better else '↓'}</td><td>{html.escape(m.description)}</td>"
                   f"<td>{html.escape(', '.join(m.prompt_types))}</td></tr>"
                   for m in (get_metric(n) for n in cfg.metrics.names))
    return ("<h2 id=metrics>Metrics</h2><table><tr><th>metric</th><th></th><th>definition</th><th>prompt sets</th>"
            f"</tr>{rows}</table>")


def render_html(cfg: EvalConfig, outcome: Outcome) -> str:
    rows, aggs = outcome.rows, outcome.aggregates
    names = [v.name for v in outcome.plan.variants]
    pooled = [n for n in names if any(not math.isnan(r.score) for r in rows if r.checkpoint == n)]
    parts = [f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{html.escape(cfg.report.title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{html.escape(cfg.report.title)}</h1>", _summary(cfg, outcome),
             "<p class=note>Files: <code>results.csv</code>, <code>results.json</code>, <code>manifest.json</code> "
             "next to this report. ↑ higher is better, ↓ lower is better.</p>"]
    cats = sorted({r.category for r in aggs if r.level == "category"})
    if len(pooled) >= 2:
        parts.append("<h2 id=scores>Rank-normalised scores per category</h2><p class=note>(rank − 1)/(N − 1) over "
                     f"the {len(pooled)} compared checkpoints per leaf and metric, averaged subclass → class → "
                     "category; 1 = best.</p>")
        for cat in cats:
            sub = [r for r in aggs if r.level == "category" and r.category == cat]
            parts.append(f"<h3>{html.escape(cat)}</h3>{_table(sub, 'score', pooled)}")
    parts.append("<h2 id=raw-category>Raw values per category</h2><p class=note>Unweighted means over subclasses, "
                 "then classes.</p>")
    for cat in cats:
        sub = [r for r in aggs if r.level == "category" and r.category == cat]
        parts.append(f"<h3>{html.escape(cat)}</h3>{_table(sub, 'value', names)}")
    parts.append("<h2 id=raw>Raw values per leaf</h2>")
    by_leaf: dict[tuple, list[Row]] = defaultdict(list)
    for r in rows:
        by_leaf[r.leaf].append(r)
    for leaf in outcome.plan.leaves:
        sub = by_leaf.get(leaf.key, [])
        if sub:
            parts.append(f"<h3>{html.escape(leaf.id)}</h3>{_table(sub, 'value', names)}")
            if len(pooled) >= 2:
                parts.append(f"<details><summary>scores</summary>{_table(sub, 'score', pooled)}</details>")
    parts.append(_plots(cfg, aggs, use_scores=len(pooled) >= 2))
    parts.append(_grids(cfg, outcome))
    parts.append(_glossary(cfg))
    parts.append("</body></html>")
    return "\n".join(p for p in parts if p)


#: images.csv lists the first images of every prompt set (for contact sheets, e.g. ``lyco analyze``)
IMAGES_LISTED = 4
IMAGE_COLUMNS = ("checkpoint", "config", "seed", "epoch", "category", "class", "subclass", "prompt_type", "k",
                 "image_seed", "prompt", "path")


def write_images_csv(cfg: EvalConfig, outcome: Outcome, path: Path) -> None:
    """Where the generated images are: the first IMAGES_LISTED of every (checkpoint, leaf, prompt type) set."""
    plan = outcome.plan
    leaves = {leaf.id: leaf for leaf in plan.leaves}
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(IMAGE_COLUMNS), lineterminator="\n")
    w.writeheader()
    for (variant, leaf_id, ptype), jobs in plan.sets.items():
        v, leaf = plan.variant(variant), leaves[leaf_id]
        for j in jobs[:IMAGES_LISTED]:
            w.writerow({"checkpoint": v.name, "config": v.config, "seed": v.seed, "epoch": v.epoch,
                        "category": leaf.category, "class": leaf.class_, "subclass": leaf.subclass,
                        "prompt_type": ptype, "k": j.k, "image_seed": j.seed, "prompt": j.prompt,
                        "path": str(Path(j.path(cfg.cache_dir)).resolve())})
    write_atomic(path, buf.getvalue())


def write_outputs(cfg: EvalConfig, outcome: Outcome) -> dict[str, Path]:
    out = Path(outcome.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"csv": out / "results.csv", "json": out / "results.json", "manifest": out / "manifest.json",
             "images": out / "images.csv", "html": out / "report.html"}
    all_rows = list(outcome.rows) + list(outcome.aggregates)
    write_csv(all_rows, files["csv"])
    write_json(all_rows, outcome.manifest, files["json"])
    write_atomic(files["manifest"], json.dumps(outcome.manifest, indent=1))
    write_images_csv(cfg, outcome, files["images"])
    write_atomic(files["html"], render_html(cfg, outcome))
    log.info("report: %s", files["html"])
    return files
