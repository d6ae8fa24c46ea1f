"""``report.html``: one self-contained page (plots and images are data URIs) with the findings, Table 1, the best
epoch per config, the paper's trade-off plots per category and factor, SHAP, the effects, the category scores and
contact sheets (docs/ANALYSIS.md §7.2).

Every number cell carries ``data-table`` (the CSV it comes from), ``data-key`` (the row, see :func:`key`),
``data-field`` (the CSV column) and ``data-value`` (the CSV's exact spelling), so the page can be checked against
the CSVs.
"""
from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from typing import cast

from PIL import Image as PILImage

from ..eval.plots import paper_axes
from ..eval.report import CSS, fmt, row_key
from .images import contact_sheets
from .plan import AnalysisOptions, AnalysisOutcome
from .plots import factor_scatter_png
from .table import cell, natural_key
from .targets import CRITERIA, TARGETS, target

EXTRA_CSS = """
td.agree{background:#dff0d8}td.disagree{background:#f7d7d7}td.mixed{background:#fcf3cf}
td.verdict{font-size:.9em;white-space:nowrap}.sheet img{display:block}
"""
KEYS = {"effects": ("category", "algo", "factor", "from", "to", "config_from", "config_to", "metric", "encoder",
                    "resize", "prompt_type"),
        "findings": ("check", "category"), "shap": ("category", "target", "feature"),
        "table1": ("category", "algo", "criterion"), "best": ("category", "config")}


def key(table: str, row: dict[str, object]) -> str:
    """The row identifier in ``data-key``: the row's key columns joined by ``|``."""
    return "|".join(str(row[k]) for k in KEYS[table])


def td(table: str, row: dict[str, object], field: str, text: str | None = None, cls: str = "num") -> str:
    v = row[field]
    shown = text if text is not None else (fmt(v) if isinstance(v, float) else str(v))
    return (f"<td class=\"{cls}\" data-table={table} data-key=\"{html.escape(key(table, row))}\" data-field={field} "
            f"data-value=\"{html.escape(cell(v))}\">{html.escape(shown)}</td>")


def _uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _e(s: object) -> str:
    return html.escape(str(s))


# ------------------------------------------------------------------------------------------------- sections
def _summary(outcome: AnalysisOutcome) -> str:
    st = outcome.study
    cks = st.pool
    items = [("result table", st.results.source),
             ("factors", st.factors.source if st.factors else "none"),
             ("rank pool", f"{len(cks)} checkpoints: {len({c.config for c in cks})} configs × "
                           f"{len({c.seed for c in cks})} seeds × {len({c.epoch for c in cks})} epochs"),
             ("categories", ", ".join(st.categories)),
             ("targets", "; ".join(f"{target(k).label} = {'/'.join(p for p in col if p)}"
                                   for k, col in st.targets.items())),
             ("SHAP", outcome.shap_skipped or f"{len(outcome.shap)} models (CatBoost, the paper's settings)")]
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in items)
    notes = "".join(f"<li>{_e(n)}</li>" for n in st.notes)
    return f"<table>{rows}</table>" + (f"<ul class=note>{notes}</ul>" if notes else "")


def _findings(outcome: AnalysisOutcome) -> str:
    cats = outcome.study.categories + ["all"]
    by = {(v.check.name, v.category): v.as_dict() for v in outcome.findings}
    checks = list(dict.fromkeys(v.check.name for v in outcome.findings))
    statements = {v.check.name: v.check.statement for v in outcome.findings}
    head = "".join(f"<th>{_e(c)}</th>" for c in cats)
    out = ["<h2 id=findings>Findings</h2><p class=note>The paper's findings F1–F5 as checks on the effects, per "
           "category: the mean over matched (seed, epoch) of the effects' differences in the expected direction; "
           "agree when it exceeds 2 standard errors, disagree when it is below −2, else not significant (a "
           "no-change statement agrees when it is within 2).  <em>all</em>: the verdict of most categories.  "
           "findings.csv lists the effects of every check.</p>",
           f"<table><tr><th>check</th><th>statement</th>{head}</tr>"]
    for name in checks:
        cells = []
        for c in cats:
            row = by[(name, c)]
            verdict = str(row["verdict"])
            title = f"delta {fmt(cast(float, row['delta']))} ± {fmt(cast(float, row['stderr']))} (n {row['n']})"
            cells.append(td("findings", row, "verdict", cls=f"verdict {verdict.replace(' ', '-')}")
                         .replace("<td ", f"<td title=\"{_e(title)}\" ", 1))
        out.append(f"<tr><th>{_e(name)}</th><td class=note>{_e(statements[name])}</td>{''.join(cells)}</tr>")
    out.append("</table>")
    out.append("<details><summary>pooled deltas and counts (effects; categories for <em>all</em>)</summary><table>"
               "<tr><th>check</th><th>category</th><th>delta</th><th>stderr</th><th>n</th><th>agree</th>"
               "<th>disagree</th><th>not significant</th></tr>")
    for name in checks:
        for c in cats:
            row = by[(name, c)]
            out.append(f"<tr><th>{_e(name)}</th><td>{_e(c)}</td>" + "".join(td("findings", row, f) for f in (
                "delta", "stderr", "n", "n_agree", "n_disagree", "n_not_significant")) + "</tr>")
    out.append("</table></details>")
    return "".join(out)


def _table1(outcome: AnalysisOutcome) -> str:
    if not outcome.table1:
        return ""
    out = ["<h2 id=table1>Table 1: algorithms at their defaults</h2><p class=note>Per criterion: rank among the "
           "algorithms' default configs (k = best, as the paper's Table 1) and the mean category score over seeds "
           "and epochs (fidelity = mean of the ImSim targets).  <em>all</em>: mean over categories.</p>"]
    cats = list(dict.fromkeys(str(r["category"]) for r in outcome.table1))
    for cat in cats:
        rows = [r for r in outcome.table1 if r["category"] == cat]
        algos = sorted({str(r["algo"]) for r in rows}, key=natural_key)
        head = "".join(f"<th>{_e(c)} rank</th><th>{_e(c)} score</th>" for c in CRITERIA)
        body = []
        for a in algos:
            cells = []
            for c in CRITERIA:
                r = next((r for r in rows if r["algo"] == a and r["criterion"] == c), None)
                cells.append(td("table1", r, "rank") + td("table1", r, "score") if r else "<td>–</td><td>–</td>")
            config = next(str(r["config"]) for r in rows if r["algo"] == a)
            body.append(f"<tr><th>{_e(a)} <span class=note>({_e(config)})</span></th>{''.join(cells)}</tr>")
        out.append(f"<h3>{_e(cat)}</h3><table><tr><th>algorithm</th>{head}</tr>{''.join(body)}</table>")
    return "".join(out)


def _best(outcome: AnalysisOutcome) -> str:
    if not outcome.best:
        return ""
    out = ["<h2 id=best>Best epoch per config</h2><p class=note>The epoch with the highest harmonic mean of the "
           "seed-averaged criterion scores; <em>checkpoint</em>: its best seed.</p>"]
    for cat in outcome.study.categories:
        rows = [r for r in outcome.best if r["category"] == cat]
        if not rows:
            continue
        head = "".join(f"<th>{c}</th>" for c in ("config", "algo", "epoch", "checkpoint", *CRITERIA, "harmonic mean"))
        body = "".join("<tr>" + "".join(td("best", r, f, cls="") for f in ("config", "algo", "epoch", "checkpoint"))
                       + "".join(td("best", r, f) for f in (*CRITERIA, "harmonic_mean")) + "</tr>" for r in rows)
        out.append(f"<h3>{_e(cat)}</h3><table><tr>{head}</tr>{body}</table>")
    return "".join(out)


def _plots(outcome: AnalysisOutcome) -> str:
    st = outcome.study
    col = st.targets.get("imsim_alter") or st.targets.get("imsim_trigger")
    enc, resize = (col[1], col[2]) if col else ("dino", "letterbox")
    class_rows = [r for r in outcome.scores if r.level == "class"]
    configs = sorted({c.config for c in st.pool}, key=natural_key)
    groups: list[tuple[str, dict[str, str], dict[str, str]]] = []
    f = st.factors
    if f is None:
        groups.append(("all configs", {c: "" for c in configs}, {}))
    else:
        for factor in f.compared:
            members = [c for c in configs if f.variant_factor(c) in ("", factor)]
            if not any(f.variant_factor(c) == factor for c in members):
                continue
            shown = "lr_level" if factor == "lr" and "lr_level" in f.columns else factor
            levels = {c: "" if f.variant_factor(c) == "" else f"{shown} {f.get(c, shown)}" for c in members}
            groups.append((factor, {c: f.algo(c) for c in members}, levels))
    parts = []
    for cat in st.categories:
        figs = []
        for name, algos, levels in groups:
            for x, y in paper_axes(enc, resize):
                png = factor_scatter_png(class_rows, cat, algos, levels, x, y, f"{cat}: defaults + {name}")
                if png:
                    figs.append(f"<figure><img src=\"{_uri(png)}\" alt=\"{_e(cat)} {_e(name)}: {_e(y.label())} vs "
                                f"{_e(x.label())}\"></figure>")
        if figs:
            parts.append(f"<h3>{_e(cat)}</h3><div class=plots>{''.join(figs)}</div>")
    if not parts:
        return ""
    return ("<h2 id=plots>Trade-offs per factor</h2><p class=note>The paper's three plots per category and factor: "
            "the algorithms' defaults plus the configs that change only that factor.  Each point is a config at one "
            "epoch (the line joins its epochs; the last is labelled), averaged over seeds × classes, with standard "
            "errors; colour = algorithm, marker = the factor's level.</p>" + "".join(parts))


def _shap(outcome: AnalysisOutcome, pngs: dict[tuple[str, str], bytes]) -> str:
    head = "<h2 id=shap>SHAP</h2>"
    if not outcome.shap:
        return head + f"<p class=note>{_e(outcome.shap_skipped or 'no SHAP models')}</p>"
    out = [head, "<p class=note>CatBoost (300 iterations, learning rate 0.1, seed 123, nan_mode Min) per category "
           "and target on the coded factors, one row per checkpoint; mean |SHAP| ± its spread over seeds; R² "
           "in-sample and held out (leave one config out).</p>"]
    for cat in outcome.study.categories:
        models = [m for m in outcome.shap if m.category == cat]
        if not models:
            continue
        out.append(f"<h3>{_e(cat)}</h3><table><tr><th>target</th><th>R² in-sample</th><th>R² held-out</th>"
                   "<th>feature</th><th>mean |SHAP|</th><th>spread</th></tr>")
        for m in models:
            for i, row in enumerate(m.summary):
                lead = (f"<th rowspan={len(m.summary)}>{_e(target(m.target).label)}</th>"
                        + td("shap", row, "r2_train").replace("<td ", f"<td rowspan={len(m.summary)} ", 1)
                        + td("shap", row, "r2_holdout").replace("<td ", f"<td rowspan={len(m.summary)} ", 1)
                        ) if i == 0 else ""
                out.append(f"<tr>{lead}<td>{_e(row['feature'])}</td>{td('shap', row, 'mean_abs_shap')}"
                           f"{td('shap', row, 'spread')}</tr>")
        out.append("</table><div class=plots>")
        for m in models:
            png = pngs.get((cat, m.target))
            if png:
                out.append(f"<figure><img src=\"{_uri(png)}\" alt=\"SHAP {_e(cat)} {_e(m.target)}\"></figure>")
        out.append("</div>")
    return "".join(out)


def _effects(outcome: AnalysisOutcome) -> str:
    cols = set(outcome.study.targets.values())
    shown = [e for e in outcome.effects if e.column in cols]
    if not shown:
        return ""
    out = ["<h2 id=effects>Effects</h2><p class=note>Mean change of the category score from <em>from</em> to "
           "<em>to</em> over matched seeds and epochs (the six targets; effects.csv has every metric column).  "
           "Bold: |delta| > 2 stderr.</p>"]
    names = {v: target(k).label for k, v in outcome.study.targets.items()}
    for cat in outcome.study.categories:
        rows = [e for e in shown if e.category == cat]
        if not rows:
            continue
        body = []
        for e in rows:
            d = e.as_dict()
            delta = td("effects", d, "delta").replace("<td ", "<td style=\"font-weight:bold\" ", 1) \
                if e.significant else td("effects", d, "delta")
            body.append(f"<tr><td>{_e(d['algo'])}</td><td>{_e(d['factor'])}</td><td>{_e(d['from'])} → {_e(d['to'])}"
                        f"</td><td>{_e(d['config_from'])} → {_e(d['config_to'])}</td><td>{_e(names[e.column])}</td>"
                        f"{delta}{td('effects', d, 'stderr')}{td('effects', d, 'n')}</tr>")
        out.append(f"<details><summary>{_e(cat)} ({len(rows)} effects)</summary><table><tr><th>algo</th><th>factor"
                   "</th><th>from → to</th><th>configs</th><th>target</th><th>delta</th><th>stderr</th><th>n</th>"
                   f"</tr>{''.join(body)}</table></details>")
    return "".join(out)


def _scores(outcome: AnalysisOutcome) -> str:
    cols = [(t, outcome.study.targets[t.key]) for t in TARGETS if t.key in outcome.study.targets]
    names = [c.name for c in outcome.study.pool]
    out = ["<h2 id=scores>Category scores</h2><p class=note>Rank-normalised (1 = best) over the whole pool, "
           "averaged subclass → class → category (scores.csv has every leaf and column).</p>"]
    for cat in outcome.study.categories:
        cell_of = {(r.checkpoint, r.column): r for r in outcome.scores if r.level == "category" and r.category == cat}
        head = "".join(f"<th>{_e(t.label)}</th>" for t, _ in cols)
        body = []
        for n in names:
            tds = []
            for _, col in cols:
                r = cell_of.get((n, col))
                tds.append("<td>–</td>" if r is None else
                           f"<td class=num data-table=scores data-key=\"{_e(row_key(r))}\" data-field=score "
                           f"data-value=\"{_e(cell(r.score))}\">{_e(fmt(r.score))}</td>")
            body.append(f"<tr><th>{_e(n)}</th>{''.join(tds)}</tr>")
        out.append(f"<details><summary>{_e(cat)}</summary><table><tr><th>checkpoint</th>{head}</tr>{''.join(body)}"
                   "</table></details>")
    return "".join(out)


def _thumb(path, size: int) -> str:
    with PILImage.open(path) as img:
        im = img.convert("RGB")
        scale = size / max(im.size)
        if scale != 1:
            im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                           PILImage.Resampling.NEAREST if scale > 1 else PILImage.Resampling.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, format="PNG")
    return _uri(buf.getvalue())


def _sheets(outcome: AnalysisOutcome, options: AnalysisOptions) -> str:
    st = outcome.study
    sheets = contact_sheets(st.images, st.pool, st.factors, options.contact_prompt_type, options.contact_image)
    if not sheets:
        return ""
    out = ["<h2 id=images>Contact sheets</h2><p class=note>One image per config (rows) and epoch (columns): the same "
           "prompt and image seed, each config's first training seed.</p>"]
    for s in sheets:
        leaf = "/".join(p for p in s.leaf if p)
        head = "".join(f"<th>epoch {_e(e)}</th>" if e else "<th>image</th>" for e in s.epochs)
        rows = []
        for config, by_epoch in s.cells.items():
            cells = "".join(f"<td><img src=\"{_thumb(p, options.thumb_size)}\" alt=\"{_e(config)} epoch {_e(e)}\"></td>"
                            if p is not None else "<td>–</td>" for e, p in by_epoch.items())
            rows.append(f"<tr><th>{_e(config)}</th>{cells}</tr>")
        out.append(f"<h3>{_e(leaf)} <span class=note>— {_e(s.prompt_type)} image {s.k}: {_e(s.prompt)}; training seed "
                   f"{_e(s.seed)}</span></h3><table class=\"grid sheet\"><tr><th>config</th>{head}</tr>"
                   f"{''.join(rows)}</table>")
    return "".join(out)


def _factors(outcome: AnalysisOutcome) -> str:
    f = outcome.study.factors
    if f is None:
        return ""
    head = "".join(f"<th>{_e(c)}{'*' if c in f.derived else ''}</th>" for c in f.columns)
    defaults = set(f.defaults.values())
    body = "".join("<tr>" + "".join(f"<td>{_e(f.values[c].get(col, '') if col != 'config' else c)}"
                                    f"{' (default)' if col == 'config' and c in defaults else ''}</td>"
                                    for col in f.columns) + "</tr>" for c in f.configs)
    return (f"<h2 id=factors>Factors</h2><p class=note>* derived by lyco from the grid (levels relative to each "
            f"algorithm's default); compared: {_e(', '.join(f.compared))}.</p><table><tr>{head}</tr>{body}</table>")


def render_html(outcome: AnalysisOutcome, options: AnalysisOptions, pngs: dict[tuple[str, str], bytes]) -> str:
    parts: Sequence[str] = [
        f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{_e(options.title)}</title>"
        f"<style>{CSS}{EXTRA_CSS}</style></head><body><h1>{_e(options.title)}</h1>",
        _summary(outcome), _findings(outcome), _table1(outcome), _best(outcome), _plots(outcome),
        _shap(outcome, pngs), _effects(outcome), _scores(outcome), _sheets(outcome, options), _factors(outcome),
        "</body></html>"]
    return "\n".join(p for p in parts if p)
