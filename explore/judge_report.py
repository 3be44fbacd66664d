"""The judge's output: text tables, metrics JSON and an HTML page (tables and the plot of hit@M by level, in the
style of the demo's report.html).

Presentation only; the numbers come from `interests.evaluation.judge`.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

from explore.report import CSS
from interests.evaluation.judge import BUCKETS, TARGET_SETS, LevelResult, pair_sentences, summary_sentences

TARGET_TEXT = {
    "any": "any next new cluster",
    "liked": "the first interaction in it rated at or above the user's mean",
    "sticky": "the user comes back to it at least twice within the next 10 interactions",
}


def _f(v: float | None, fmt: str = ".3f") -> str:
    return "-" if v is None or v != v else format(v, fmt)


def format_level(result: LevelResult, m: int) -> str:
    """One text table per target set of a level, with the summary sentences."""
    lines = [f"level {result.level}: {result.n_clusters} clusters; {result.moments:,} test moments "
             f"(liked {_f(result.counts['liked'], ',')}, sticky {_f(result.counts['sticky'], ',')}); contexts "
             + " / ".join(f"{b} {result.buckets[b]:,}" for b in BUCKETS)
             + f"; {result.train_transitions:,} training transitions"]
    lines += [f"  WARNING: {w}" for w in result.warnings]
    for target in TARGET_SETS:
        if result.counts[target] is None:
            lines.append(f"  target {target}: not available (the data has no ratings)")
            continue
        best = result.best[target]
        lines.append(f"  target {target} ({result.counts[target]:,} moments, targets' entropy "
                     f"{result.target_entropy.get(target, float('nan')):.2f} bits; best non-LM method: {best})")
        width = max(36, *(len(name) for name in result.methods))
        lines.append(f"    {'method':{width}} {'hit@' + str(m):>7} {'95% CI':>13} {'unseen':>7} {'rare':>7} "
                     f"{'common':>7} {'cover':>6} {'entropy':>7} {'JSD':>6} {'offered':>7}  vs best (won/lost, p)")
        for name, r in result.methods.items():
            row = r.rows[target]
            lo, hi = row["ci95"]
            by = row["by_context"]
            vs = row.get("vs_best")
            versus = f"+{vs['won']} / -{vs['lost']}, p = {vs['p']:.3g}" if vs else ""
            lines.append(f"    {name:{width}} {_f(row['hit']):>7} {_f(lo) + '-' + _f(hi):>13} {_f(by['unseen']):>7} "
                         f"{_f(by['rare']):>7} {_f(by['common']):>7} {row['coverage']:>6.3f} "
                         f"{row['entropy_bits']:>7.2f} {row['jsd_bits']:>6.3f} {_f(row['offered_per_user'], '.1f'):>7}"
                         f"  {versus}")
        lines += [f"    {s}" for s in summary_sentences(result, target) + pair_sentences(result, target)]
    lines.append("  seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in result.seconds.items()))
    return "\n".join(lines)


def to_json(results: list[LevelResult], m: int, meta: dict) -> dict:
    """Everything the tables show, as plain JSON (NaN as null)."""
    def clean(v: object) -> object:
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        return None if isinstance(v, float) and math.isnan(v) else v

    return clean({**meta, "m": m, "levels": [
        {"level": r.level, "clusters": r.n_clusters, "moments": r.moments, "targets": r.counts, "buckets": r.buckets,
         "training_transitions": r.train_transitions, "warnings": r.warnings, "best_non_lm": r.best,
         "seconds": r.seconds, "summary": {t: summary_sentences(r, t) + pair_sentences(r, t) for t in TARGET_SETS},
         "pairs": r.pairs, "target_entropy_bits": r.target_entropy,
         "methods": {name: {"is_lm": res.is_lm, **res.rows} for name, res in r.methods.items()}}
        for r in results]})  # type: ignore[return-value]


def plot_by_level(results: list[LevelResult], m: int) -> bytes:
    """PNG: hit@M by number of clusters, one line per method (95 % intervals), a panel per target set.

    About 1,200 px wide (11 in at 110 dpi) with the legend below the panels, so that the page shows it whole."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TARGET_SETS), figsize=(11, 3.6), sharex=True, sharey=True)
    names = list(dict.fromkeys(name for r in results for name in r.methods))
    for ax, target in zip(axes, TARGET_SETS, strict=True):
        for name in names:
            pts = [(r.n_clusters, r.methods[name].rows[target]) for r in results
                   if name in r.methods and target in r.methods[name].rows]
            if not pts:
                continue
            x = [p[0] for p in pts]
            y = [p[1]["hit"] for p in pts]
            err = [[p[1]["hit"] - p[1]["ci95"][0] for p in pts], [p[1]["ci95"][1] - p[1]["hit"] for p in pts]]
            lm = any(r.methods[name].is_lm for r in results if name in r.methods)
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, lw=2.2 if lm else 1.2, ls="-" if lm else "--",
                        label=name)
        if all(r.counts.get(target) is None for r in results):
            ax.text(0.5, 0.5, "not available\n(the data has no ratings)", ha="center", va="center",
                    transform=ax.transAxes, color="#666")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("clusters at the level")
        ax.set_title(f"target: {target}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    axes[0].set_ylabel(f"hit@{m} (95 % interval, by user)")
    fig.tight_layout()
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(h)
                labels.append(label)
    if handles:
        fig.legend(handles, labels, fontsize=8, frameon=False, loc="upper center", ncols=min(4, len(labels)),
                   bbox_to_anchor=(0.5, 0.0))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


# --- the HTML page --------------------------------------------------------------------------

_CSS = CSS + """
table.judge td { white-space: nowrap; }
table.judge td:first-child, table.judge td.name { white-space: normal; min-width: 11em; text-align: left; }
table.judge th { vertical-align: bottom; }
table.judge th.name { text-align: left; }
table.judge th.group { text-align: center; border-bottom: 1px solid #bbb; white-space: nowrap; }
tr.lm td { font-weight: 600; }
tr.best td { background: #eef5ee; }
.tag { font-size: 0.8em; font-weight: normal; color: #2a6b2a; border: 1px solid #8b8; border-radius: 3px;
       padding: 0 0.3em; margin-left: 0.4em; white-space: nowrap; }
.verdict { font-size: 1.05em; margin: 0.4em 0; }
"""
_META = (("dataset", "dataset"), ("catalog_version", "catalog"), ("models", "language models (--model)"),
         ("seqrec", "SASRec checkpoints (--seqrec)"), ("mixture", "mixture (--mixture)"))


def _text_of(v: object) -> str:
    if isinstance(v, list | tuple):
        return ", ".join(str(x) for x in v)
    return str(v)


def _method_table(result: LevelResult, target: str, m: int) -> str:
    """Each method's hit rate with its interval, by context, the spread of its proposals and, for a language
    model, its paired counts against the best non-LM method (marked)."""
    e = html.escape
    best = result.best[target]
    head = (f'<tr><th rowspan="2">method</th><th rowspan="2">hit@{m}</th><th rowspan="2">95% CI</th>'
            f'<th colspan="3" class="group">hit@{m} by context</th><th colspan="4" class="group">proposals</th>'
            '<th colspan="2" class="group">vs best non-LM</th></tr>'
            "<tr><th>unseen</th><th>rare</th><th>common</th><th>coverage</th><th>entropy (bits)</th>"
            "<th>JSD (bits)</th><th>clusters per user</th><th>won / lost</th><th>McNemar p</th></tr>")
    rows = []
    for name, r in result.methods.items():
        if target not in r.rows:
            continue
        row = r.rows[target]
        by = row["by_context"]
        vs = row.get("vs_best")
        cls = " ".join(c for c, on in (("lm", r.is_lm), ("best", name == best)) if on)
        tag = '<span class="tag">best non-LM</span>' if name == best else ""
        cells = [_f(row["hit"]), f"{_f(row['ci95'][0])}-{_f(row['ci95'][1])}", _f(by["unseen"]), _f(by["rare"]),
                 _f(by["common"]), _f(row["coverage"]), _f(row["entropy_bits"], ".2f"), _f(row["jsd_bits"]),
                 _f(row["offered_per_user"], ".1f"), f"+{vs['won']} / -{vs['lost']}" if vs else "",
                 f"{vs['p']:.3g}" if vs else ""]
        attr = f' class="{cls}"' if cls else ""
        rows.append(f"<tr{attr}><td>{e(name)}{tag}</td>"
                    + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f'<div class="wide"><table class="judge">{head}\n' + "\n".join(rows) + "</table></div>"


def _pairs_table(result: LevelResult, target: str) -> str:
    """The paired comparisons asked of this table (e.g. the mixture against itself without the LM)."""
    pairs = result.pairs.get(target, [])
    if not pairs:
        return ""
    e = html.escape
    head = ('<th>method</th><th class="name">against</th>' + "".join(f"<th>{h}</th>" for h in (
        "difference", "95% CI", "won / lost", "McNemar p", "by context (unseen / rare / common)")))
    rows = []
    for c in pairs:
        by = " / ".join(_f(c["by_context"][b], "+.3f") for b in BUCKETS) if "by_context" in c else ""
        cells = [_f(c["diff"], "+.3f"), f"{_f(c['ci95'][0], '+.3f')} to {_f(c['ci95'][1], '+.3f')}",
                 f"+{c['won']} / -{c['lost']}", f"{c['p']:.3g}", by]
        rows.append(f'<tr><td>{e(c["method"])}</td><td class="name">{e(c["against"])}</td>'
                    + "".join(f"<td>{x}</td>" for x in cells) + "</tr>")
    sentences = "".join(f"<li>{e(s)}</li>" for s in pair_sentences(result, target))
    return (f'<h4>Paired comparisons</h4>\n<ul class="verdict">{sentences}</ul>\n'
            f'<div class="wide"><table class="judge"><tr>{head}</tr>\n' + "\n".join(rows) + "</table></div>")


def _level_html(result: LevelResult, m: int) -> str:
    e = html.escape
    counts = result.counts
    parts = [f"<h2>Level {result.level}: {result.n_clusters} clusters</h2>",
             f'<p class="note">{result.moments:,} test moments (liked {_f(counts.get("liked"), ",")}, sticky '
             f'{_f(counts.get("sticky"), ",")}); contexts by how often they occurred in training: '
             + ", ".join(f"{b} {result.buckets[b]:,}" for b in BUCKETS)
             + f"; {result.train_transitions:,} training transitions."
             + (" Seconds: " + ", ".join(f"{e(k)} {v:.1f}" for k, v in result.seconds.items()) + "."
                if result.seconds else "") + "</p>"]
    parts += [f'<p class="warn">Warning: {e(w)}</p>' for w in result.warnings]
    for target in TARGET_SETS:
        parts.append(f"<h3>Target: {e(target)}</h3>")
        if counts.get(target) is None:
            parts.append('<p class="note">Not available: the data has no ratings.</p>')
            continue
        verdicts = summary_sentences(result, target)
        parts += [f'<p class="verdict">{e(s)}</p>' for s in verdicts]
        if not verdicts:
            parts.append(f'<p class="verdict">No language model in this table; the best non-LM method is '
                         f'{e(str(result.best[target]))}.</p>')
        parts.append(f'<p class="note">{counts[target]:,} moments; entropy of their targets '
                     f'{_f(result.target_entropy.get(target), ".2f")} bits.</p>')
        parts.append(_method_table(result, target, m))
        parts.append(_pairs_table(result, target))
    return "\n".join(p for p in parts if p)


def judge_html(results: list[LevelResult], m: int, meta: dict, png: bytes) -> str:
    """The page: settings, the plot, then per level and target set the verdict, the methods and the pairs."""
    e = html.escape
    settings = [(label, _text_of(meta[key])) for key, label in _META if meta.get(key)]
    settings += [("levels judged", ", ".join(f"{r.level} ({r.n_clusters} clusters)" for r in results)),
                 ("proposals per moment", f"M = {m}")]
    settings_rows = "".join(f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in settings)
    targets = "".join(f"<li><b>{t}</b>: {e(TARGET_TEXT[t])}</li>" for t in TARGET_SETS)
    levels = "\n".join(_level_html(r, m) for r in results)
    text = e("\n\n".join(format_level(r, m) for r in results))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Novelty judge: {e(str(meta.get('dataset', '')))}</title>
<style>{_CSS}</style></head><body>
<h1>Does the language model name the next new interest better?</h1>
<table class="kv">{settings_rows}</table>
<p>At every test moment (a user about to touch a cluster new to them) each method proposes {m} clusters the user does
not know (the clusters they know are excluded for every method); a hit is the user's next new cluster among them.
Intervals: bootstrap over users. Each language model is compared with the best non-LM method of its table (picked on
the test moments, which favours the baseline) by the exact McNemar test on the moments one of the two hits and the
other misses (won / lost).</p>
<ul>{targets}</ul>
<h2>Hit rate by level</h2>
<img alt="hit@{m} by level, one panel per target set" src="data:image/png;base64,{base64.b64encode(png).decode()}">
<p class="note">One line per method (language models solid), bars: 95 % intervals. Also <code>hit_by_level.png</code>
next to this file. Clusters per user (in the tables below): the distinct clusters a method offered each user over
their test moments, on average.</p>
{levels}
<h2>The same as text</h2>
<details><summary>The tables as <code>explore novelty eval</code> printed them</summary>
<pre>{text}</pre></details>
<p class="note">Files next to this page: judge.json (every number above), hit_by_level.png.</p>
</body></html>
"""


def write_outputs(results: list[LevelResult], m: int, meta: dict, out: Path) -> Path:
    """judge.json, hit_by_level.png and judge.html in `out`; returns the HTML path."""
    out.mkdir(parents=True, exist_ok=True)
    doc = to_json(results, m, meta)
    (out / "judge.json").write_text(json.dumps(doc, indent=1))
    png = plot_by_level(results, m)
    (out / "hit_by_level.png").write_bytes(png)
    path = out / "judge.html"
    path.write_text(judge_html(results, m, meta, png))
    return path
