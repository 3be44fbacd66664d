"""The judge's output: text tables, metrics JSON and an HTML page with the plot of hit@M by level.

Presentation only; the numbers come from `interests.evaluation.judge`.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

from interests.evaluation.judge import BUCKETS, TARGET_SETS, LevelResult, pair_sentences, summary_sentences

TARGET_TEXT = {
    "any": "any next new cluster",
    "liked": "liked: the first interaction in it rated at or above the user's mean",
    "sticky": "sticky: the user comes back to it at least twice within the next 10 interactions",
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
    """PNG: hit@M by number of clusters, one line per method (95 % intervals), a panel per target set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TARGET_SETS), figsize=(5 * len(TARGET_SETS), 4.2), sharey=True)
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
        ax.set_xscale("log", base=2)
        ax.set_xlabel("clusters at the level")
        ax.set_title(f"target: {target}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"hit@{m} (95 % interval, by user)")
    axes[-1].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def write_outputs(results: list[LevelResult], m: int, meta: dict, out: Path) -> Path:
    """judge.json, hit_by_level.png and judge.html in `out`; returns the HTML path."""
    out.mkdir(parents=True, exist_ok=True)
    doc = to_json(results, m, meta)
    (out / "judge.json").write_text(json.dumps(doc, indent=1))
    png = plot_by_level(results, m)
    (out / "hit_by_level.png").write_bytes(png)
    tables = "\n".join(f"<h2>Level {r.level}: {r.n_clusters} clusters</h2><pre>{html.escape(format_level(r, m))}</pre>"
                       for r in results)
    targets = "".join(f"<li><b>{t}</b>: {html.escape(TARGET_TEXT[t])}</li>" for t in TARGET_SETS)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>Novelty judge</title>"
            f"<style>body{{font-family:sans-serif;max-width:1500px;margin:2em auto}}pre{{font-size:12px}}</style>"
            f"</head><body><h1>Does the language model name the next new interest better?</h1>"
            f"<p>{html.escape(meta.get('dataset', ''))}; M = {m}; clusters the user knows are excluded for every "
            f"method; intervals: bootstrap over users; paired tests: exact McNemar against the best non-LM method "
            f"of each table (picked on the test moments, which favours the baseline).</p><ul>{targets}</ul>"
            f"<img alt='hit@M by level' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
            f"{tables}</body></html>")
    path = out / "judge.html"
    path.write_text(page)
    return path
