"""The evaluation report: what the engine recommended in the replayed period against what users did next,
beside the baselines, as one self-contained HTML file (plots embedded; the PNGs and metrics.json next to it).

The metrics and the protocol are in `interests.evaluation.replay`; this module runs the baselines' slates
through the exported `seqrec` graph in-process and renders.
"""

from __future__ import annotations

import base64
import html
import io
import json
import shlex
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from interests.clusters.catalog import Catalog, CatalogError, check_same_items
from interests.data.datasets import Dataset
from interests.data.splits import in_item_order
from interests.evaluation.judge import target_flags
from interests.evaluation.proposals import context_frequency_buckets, diversity
from interests.evaluation.replay import (
    BUCKETS,
    Result,
    engine_outputs,
    evaluate,
    moments_at,
    novel_clusters_of,
    restricted_slates,
    select_records,
    training_transitions,
)
from interests.evaluation.stats import paired as paired_counts
from interests.novelty.rules import POPULAR, RANDOM, TRANSITIONS, baseline_scores, seqrec_cluster_scores, top_m

HORIZON = 10  # "hit within the next H interactions"
ENGINE = "engine (as served)"  # the mixture of experts, or the LM's table then SASRec: the records say
EXPLOIT = "exploit-only SASRec"
SEQREC_EXPLORES = "SASRec explores"  # the judge's strongest single explorer, on the engine's own moments
BASELINES = ("random novel clusters", "popular novel clusters", "transition counts")
COLORS = {ENGINE: "#d62728", EXPLOIT: "#7f7f7f", "random novel clusters": "#9467bd",
          "popular novel clusters": "#1f77b4", "transition counts": "#2ca02c", SEQREC_EXPLORES: "#ff7f0e"}


def _day(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts))


def build_report(ds: Dataset, catalog_dir: Path, repository: Path, recommendations: list[dict], start_ts: float,
                 out_dir: Path, k: int = 2, m: int = 3, n: int = 10, seed: int = 0, progress: bool = True,
                 command: str | None = None, seqrec_checkpoint: Path | None = None,
                 facts: dict[str, str] | None = None) -> Path:
    """Evaluate the engine's records of the held-out period (event_ts >= start_ts) and the baselines at the same
    moments; write report.html, the plots as PNGs and metrics.json into `out_dir`; return the HTML's path.

    `command` is the line printed as the one that made the report (default: this process's command line).
    `seqrec_checkpoint` (the SASRec the engine serves, trained before `start_ts`) adds "SASRec explores": its
    next-item probabilities summed per unknown cluster, the judge's best single explorer. `facts`: lines about the run
    that only its caller knows (the demo's new items), shown in the report's head and kept in metrics.json."""
    from streams.inference.seqrec import OnnxSeqRec

    t0 = time.perf_counter()
    catalog_dir, repository, out_dir = Path(catalog_dir), Path(repository), Path(out_dir)
    catalog = Catalog.load(catalog_dir)
    meta = json.loads((repository / "seqrec" / "1" / "meta.json").read_text())
    if meta.get("catalog_version") != catalog.version:
        raise CatalogError(f"seqrec in {repository} was exported with catalog {meta.get('catalog_version')}, "
                           f"{catalog_dir} is catalog {catalog.version}")
    if list(map(str, ds.item_ids)) != catalog.item_ids and set(map(str, ds.item_ids)) == set(catalog.item_ids):
        ds = in_item_order(ds, catalog.item_ids)  # a catalog grown by new items lists them last
    check_same_items(catalog, ds.item_ids)
    level, max_len = int(meta["level"]), int(meta["max_len"])
    item_cluster = catalog.item_clusters(level).astype(np.int64)
    descriptions = catalog.descriptions(level)
    n_clusters = len(descriptions)

    sel = select_records(recommendations, ds, start_ts)
    if not sel.records:
        raise ValueError(f"none of the {len(recommendations):,} recommendation records is at or after "
                         f"{_day(start_ts)} (start ts {start_ts:.0f}) for a user and position of {ds.name}")
    mo = moments_at(ds, item_cluster, sel.users, sel.positions, k, HORIZON)
    train, held = training_transitions(ds, item_cluster, k, start_ts)
    buckets = context_frequency_buckets(train, mo.contexts)
    targets = target_flags(ds, item_cluster, mo.next_novel_row, mo.users, mo.next_novel)
    excludes = mo.known

    seqrec = OnnxSeqRec(repository / "seqrec" / "1" / "model.onnx")
    slates_of = {}
    proposals_of = {}
    proposals_of[ENGINE], slates_of[ENGINE] = engine_outputs(sel.records, ds, m, n)
    t_models = time.perf_counter()
    slates_of[EXPLOIT] = restricted_slates(seqrec.top_n, mo, None, n_clusters, max_len, n, progress=progress,
                                           desc=EXPLOIT)
    proposals_of[EXPLOIT] = novel_clusters_of(slates_of[EXPLOIT], item_cluster, mo.known, m)
    label = dict(zip((RANDOM, POPULAR, TRANSITIONS), BASELINES, strict=True))
    for name, scores in baseline_scores(train, n_clusters, mo.contexts, seed).items():
        proposals_of[label[name]] = top_m(scores, excludes, m)
    baselines = list(BASELINES)
    if seqrec_checkpoint is not None:
        proposals_of[SEQREC_EXPLORES] = seqrec_explores(seqrec_checkpoint, ds, mo, item_cluster, n_clusters, m,
                                                        start_ts)
        baselines.append(SEQREC_EXPLORES)
    for name in baselines:
        slates_of[name] = restricted_slates(seqrec.top_n, mo, proposals_of[name], n_clusters, max_len, n,
                                            progress=progress, desc=name)
    slate_s = time.perf_counter() - t_models

    results = {name: evaluate(proposals_of[name], slates_of[name], mo, item_cluster, n_clusters, held.targets, n,
                              buckets, targets, seed) for name in (ENGINE, EXPLOIT, *baselines)}
    empirical = diversity([[int(t)] for t in held.targets], n_clusters, held.targets)
    engine_hits = results[ENGINE].novel_hits
    paired = {}
    for name in (EXPLOIT, *baselines):
        pair = paired_counts(engine_hits, results[name].novel_hits)
        paired[name] = {"engine_only": pair["won"], "method_only": pair["lost"], "p": pair["p"]}

    latency = np.array([float(r["latency_ms"]) for r in sel.records if r.get("latency_ms") is not None])
    versions: dict[str, list[str]] = {}
    for r in sel.records:
        for key, v in (r.get("versions") or {}).items():
            if str(v) not in versions.setdefault(key, []):
                versions[key].append(str(v))
    end_ts = float(ds.timestamps.max())
    doc = {
        "dataset": ds.name, "catalog_version": catalog.version, "level": level, "clusters": n_clusters,
        "start_ts": float(start_ts), "end_ts": end_ts, "k": k, "m": m, "n": n, "horizon": HORIZON, "seed": seed,
        "moments": len(mo), "users": len(np.unique(mo.users)),
        "records": {"given": len(recommendations), "evaluated": len(sel.records), "before_start": sel.before_start,
                    "superseded": sel.superseded, "unknown_user_or_position": sel.unknown},
        "engine": {"source": dict(Counter(str(r.get("source")) for r in sel.records)),
                   "seqrec_path": dict(Counter(str(r.get("seqrec_path")) for r in sel.records)),
                   "max_novel_clusters": max(len(r["novel_clusters"]) for r in sel.records),
                   "max_slate": max(len(r["slate"]) for r in sel.records)},
        "versions": versions,
        "context_buckets": {b: int((buckets == i).sum()) for i, b in enumerate(BUCKETS)},
        "targets": {name: None if mask is None else int(mask.sum()) for name, mask in targets.items()},
        "held_out_novel_transitions": len(held), "training_novel_transitions": len(train),
        "methods": {name: res.row for name, res in results.items()},
        "empirical": empirical, "paired_novel_hit_vs_engine": paired,
        "latency_ms": _percentiles(latency),
        "command": command or shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "facts": dict(facts or {}),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = _plots(doc, results, held.targets, descriptions, latency, buckets)
    for name, png in plots.items():
        (out_dir / name).write_bytes(png)
    doc["seconds"] = {"slates": round(slate_s, 2), "total": round(time.perf_counter() - t0, 2)}
    (out_dir / "metrics.json").write_text(json.dumps(_no_nan(doc), indent=1))
    path = out_dir / "report.html"
    path.write_text(_html(doc, plots))
    return path


def seqrec_explores(checkpoint: Path, ds: Dataset, mo, item_cluster: np.ndarray, n_clusters: int,  # type: ignore[no-untyped-def]
                    m: int, start_ts: float) -> list[list[int]]:
    """The top M unknown clusters of each moment by SASRec's next-item probabilities summed per cluster."""
    from interests.seqrec.train import load_checkpoint, next_item_probabilities

    model, ckpt = load_checkpoint(checkpoint)
    if ckpt.get("item_ids") != [str(i) for i in ds.item_ids]:
        raise CatalogError(f"{checkpoint} was trained on other items than {ds.name}")
    if ckpt.get("trained_until") is not None and int(ckpt["trained_until"]) > start_ts:
        raise CatalogError(f"{checkpoint} trained on interactions after the report's start: it saw what it is "
                           "judged on")
    scores = seqrec_cluster_scores(next_item_probabilities(model), list(mo.histories), item_cluster, n_clusters)
    return top_m(scores, mo.known, m)


def _no_nan(v: object) -> object:
    """Plain JSON: numpy scalars as numbers, NaN (a metric with no moment to count) as null."""
    if isinstance(v, dict):
        return {k: _no_nan(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_no_nan(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    return None if isinstance(v, float) and v != v else v


def _percentiles(values: np.ndarray) -> dict[str, float]:
    if not len(values):
        return {}
    return {"count": len(values), "p50": float(np.percentile(values, 50)), "p95": float(np.percentile(values, 95)),
            "p99": float(np.percentile(values, 99)), "mean": float(values.mean()), "max": float(values.max())}


# --- the table ------------------------------------------------------------------------------


def columns(doc: dict) -> list[tuple[str, str, str]]:
    """(key in a method's row, heading, format) of the table's columns."""
    m, n, h = doc["m"], doc["n"], doc["horizon"]
    return [("novel_hit", f"novel hit@{m}", ".3f"), ("novel_hit_ci95", "95% CI", ".3f"),
            ("novel_hit_liked", f"liked hit@{m}", ".3f"), ("novel_hit_sticky", f"sticky hit@{m}", ".3f"),
            (f"HR@{n}", f"HR@{n}", ".4f"), (f"NDCG@{n}", f"NDCG@{n}", ".4f"),
            ("hit_within", f"hit next {h}", ".3f"), ("novel_share", "novel share", ".3f"),
            ("proposed", "clusters", ".2f"),
            ("coverage", "coverage", ".3f"), ("entropy_bits", "entropy", ".2f"), ("jsd_bits", "JSD", ".3f"),
            ("moments", "n", ".0f")]


def _fmt(v: float | list[float] | None, spec: str) -> str:
    """A number, or an interval [lo, hi] as "lo-hi"; "-" for a metric with no moment to count (None, NaN)."""
    if isinstance(v, list):
        return "-".join(_fmt(x, spec) for x in v)
    return "-" if v is None or v != v else format(v, spec)


def format_table(doc: dict) -> str:
    """The table as plain text, as `explore report` prints it."""
    cols = columns(doc)
    lines = [f"{'method':24}" + "".join(f"{h:>13}" for _, h, _ in cols)]
    for name, row in doc["methods"].items():
        lines.append(f"{name:24}" + "".join(f"{_fmt(row.get(key), spec):>13}" for key, _, spec in cols))
    emp = doc["empirical"]
    lines.append(f"{'(empirical novel)':24}" + "".join(
        f"{_fmt(emp[key], spec) if key in ('coverage', 'entropy_bits', 'jsd_bits') else '':>13}"
        for key, _, spec in cols))
    return "\n".join(lines)


# --- plots ----------------------------------------------------------------------------------


def _png(fig) -> bytes:  # type: ignore[no-untyped-def]
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _bars(ax, names: Sequence[str], groups: list[tuple[str, list[float]]], title: str) -> None:  # type: ignore[no-untyped-def]
    """Grouped bars: one group per metric, one bar per method, values written on top."""
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        xs = [i + (j - (len(names) - 1) / 2) * width for i in range(len(groups))]
        vals = [g[1][j] for g in groups]
        bars = ax.bar(xs, [0 if v != v else v for v in vals], width, label=name, color=COLORS.get(name),
                      edgecolor="white")
        for b, v in zip(bars, vals, strict=True):
            ax.annotate("-" if v != v else f"{v:.2f}", (b.get_x() + b.get_width() / 2, b.get_height()),
                        ha="center", va="bottom", fontsize=7, xytext=(0, 1), textcoords="offset points")
    ax.set_xticks(range(len(groups)), [g[0] for g in groups])
    ax.set_title(title, fontsize=11)
    ax.spines[["top", "right"]].set_visible(False)


def _plots(doc: dict, results: dict[str, Result], held_targets: np.ndarray, descriptions: list[str],
           latency: np.ndarray, buckets: np.ndarray) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    rows = doc["methods"]
    m, n, h = doc["m"], doc["n"], doc["horizon"]
    out = {}

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [2, 3]})
    _bars(a1, names, [(f"novel hit@{m}", [rows[x]["novel_hit"] for x in names]),
                      ("novel share of slate", [rows[x]["novel_share"] for x in names])],
          "Exploration: did the user's next new cluster get proposed?")
    a1.set_ylim(0, 1.1)
    _bars(a2, names, [(f"HR@{n} (next item)", [rows[x][f"HR@{n}"] for x in names]),
                      (f"NDCG@{n} (next item)", [rows[x][f"NDCG@{n}"] for x in names]),
                      (f"hit in next {h} items", [rows[x]["hit_within"] for x in names])],
          "Slate accuracy: did the user take a slate item?")
    fig.legend(*a2.get_legend_handles_labels(), fontsize=8, frameon=False, loc="upper center", ncols=len(names),
               bbox_to_anchor=(0.5, 0.0))
    out["hit_rates.png"] = _png(fig)

    n_clusters = len(descriptions)
    emp = np.bincount(held_targets, minlength=n_clusters).astype(float)
    emp /= max(emp.sum(), 1)
    order = np.argsort(-emp, kind="stable")
    fig, axes = plt.subplots(len(names), 1, figsize=(12, 1.7 * len(names) + 1.6), sharex=True, sharey=True)
    for ax, name in zip(np.atleast_1d(axes), names, strict=True):
        counts = np.bincount([c for p in results[name].proposals for c in p], minlength=n_clusters).astype(float)
        share = counts / max(counts.sum(), 1)
        ax.bar(range(n_clusters), share[order], color=COLORS.get(name), width=0.8)
        ax.stairs(emp[order], np.arange(n_clusters + 1) - 0.5, baseline=None, color="black", lw=1.2,
                  label="next novel clusters (held out)")
        r = rows[name]
        ax.set_title(f"{name}: coverage {r['coverage']:.2f}, entropy {r['entropy_bits']:.2f} bits, "
                     f"JSD {r['jsd_bits']:.3f}", fontsize=9, loc="left")
        ax.spines[["top", "right"]].set_visible(False)
    np.atleast_1d(axes)[0].legend(fontsize=8, frameon=False, loc="upper right")
    labels = [f"{c}: {_short(descriptions[c])}" for c in order]
    np.atleast_1d(axes)[-1].set_xticks(range(n_clusters), labels, rotation=90, fontsize=7)
    fig.supylabel("share of proposals")
    out["proposals.png"] = _png(fig)

    fig, ax = plt.subplots(figsize=(8, 3.6))
    if len(latency):
        bins = np.geomspace(max(latency.min(), 0.1), max(latency.max(), 1.0) * 1.01, 40) \
            if latency.max() > 20 * max(latency.min(), 0.1) else 40
        ax.hist(latency, bins=bins, color=COLORS[ENGINE], alpha=0.8)
        if not isinstance(bins, int):
            ax.set_xscale("log")
        for q, style in (("p50", "-"), ("p95", "--"), ("p99", ":")):
            v = doc["latency_ms"][q]
            ax.axvline(v, color="black", ls=style, lw=1, label=f"{q} {v:,.0f} ms")
        ax.legend(fontsize=8, frameon=False)
        ax.set_xlabel("event-to-slate latency (ms)")
        ax.set_ylabel("slates")
    else:
        ax.text(0.5, 0.5, "the records carry no latency_ms", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("Engine latency: Kafka timestamp of the triggering event to the slate's send", fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    out["latency.png"] = _png(fig)

    fig, ax = plt.subplots(figsize=(9, 3.8))
    eligible = results[ENGINE].novel_hits >= 0
    groups = []
    for i, b in enumerate(BUCKETS):
        count = int((eligible & (buckets == i)).sum())
        groups.append((f"{b} context\n({count:,} moments)", [rows[x][f"novel_hit_{b}_ctx"] for x in names]))
    _bars(ax, names, groups, f"Novel hit@{m} by how often the context occurred in training "
                             "(unseen 0, rare 1-4, common 5+)")
    ax.set_ylim(0, 1.1)
    ax.legend(fontsize=8, frameon=False, loc="upper center", ncols=len(names), bbox_to_anchor=(0.5, -0.2))
    out["by_context.png"] = _png(fig)
    return out


def _short(description: str, words: int = 3) -> str:
    parts = [p.strip() for p in description.replace(";", ",").split(",") if p.strip()]
    return ", ".join(parts[:words])[:32]


# --- HTML -----------------------------------------------------------------------------------

# The style of every page the project writes (report.html, the judge's judge.html): one column at most 1,100 px
# wide, plain tables, images scaled to the column; a wide table scrolls inside its own box (div.wide), never the page.
CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.92em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3em 0.7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.engine td { font-weight: 600; }
tr.empirical td { color: #666; font-style: italic; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
code, pre { background: #f5f5f5; padding: 0.1em 0.3em; }
pre { padding: 0.6em; overflow-x: auto; }
.wide { max-width: 100%; overflow-x: auto; }
table.kv td { text-align: left; }
.note { color: #555; font-size: 0.92em; }
.warn { color: #a33; }
"""


def _count(doc: dict, target: str) -> str:
    """How many moments a target set has, or why it has none."""
    count = doc.get("targets", {}).get(target)
    return "(not available: no ratings)" if count is None else f"{count:,}"


def _html(doc: dict, plots: dict[str, bytes]) -> str:
    e = html.escape
    m, n, h = doc["m"], doc["n"], doc["horizon"]
    cols = columns(doc)
    head = "".join(f"<th>{e(heading)}</th>" for _, heading, _ in cols)
    body = []
    for name, row in doc["methods"].items():
        cls = ' class="engine"' if name == ENGINE else ""
        body.append(f"<tr{cls}><td>{e(name)}</td>" + "".join(f"<td>{_fmt(row.get(key), spec)}</td>"
                                                          for key, _, spec in cols) + "</tr>")
    emp = doc["empirical"]
    body.append('<tr class="empirical"><td>(held-out novel transitions)</td>' + "".join(
        f"<td>{_fmt(emp[key], spec) if key in ('coverage', 'entropy_bits', 'jsd_bits') else ''}</td>"
        for key, _, spec in cols) + "</tr>")
    rec = doc["records"]
    eng = doc["engine"]
    versions = "; ".join(f"{k} {', '.join(v)}" for k, v in doc["versions"].items()) or "(none in the records)"
    eligible = int(doc["methods"][ENGINE]["novel_moments"])
    accuracy_n = int(doc["methods"][ENGINE]["accuracy_moments"])
    paired = "".join(
        f"<tr><td>{e(name)}</td><td>{p['engine_only']}</td><td>{p['method_only']}</td><td>{p['p']:.3f}</td></tr>"
        for name, p in doc["paired_novel_hit_vs_engine"].items())
    lat = doc["latency_ms"]
    lat_text = (f"p50 {lat['p50']:,.1f} ms, p95 {lat['p95']:,.1f} ms, p99 {lat['p99']:,.1f} ms over {lat['count']:,} "
                "slates") if lat else "no latency in the records"

    def img(name: str) -> str:
        return (f'<img alt="{e(name)}" src="data:image/png;base64,{base64.b64encode(plots[name]).decode()}">'
                f'<div class="note">also <code>{e(name)}</code> next to this file</div>')

    buckets = doc["context_buckets"]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Exploration report: {e(doc['dataset'])}</title>
<style>{CSS}</style></head><body>
<h1>What the engine recommended, and what users did next</h1>
<table class="kv">
<tr><td>dataset</td><td>{e(doc['dataset'])}</td></tr>
<tr><td>catalog</td><td>{e(doc['catalog_version'])} (level {doc['level']}, {doc['clusters']} clusters)</td></tr>
<tr><td>replayed (held-out) period</td><td>{_day(doc['start_ts'])} to {_day(doc['end_ts'])} UTC</td></tr>
<tr><td>moments evaluated</td><td>{doc['moments']:,} slates of {doc['users']:,} users
 ({rec['given']:,} records given: {rec['before_start']:,} before the period, {rec['superseded']:,} superseded by a later
 record of the same user and position, {rec['unknown_user_or_position']:,} not in the dataset)</td></tr>
<tr><td>settings</td><td>context K = {doc['k']}, M = {m} clusters, N = {n} items, H = {h}, seed {doc['seed']};
 engine records carry up to {eng['max_novel_clusters']} clusters and {eng['max_slate']} items</td></tr>
<tr><td>model versions (records)</td><td>{e(versions)}</td></tr>
<tr><td>engine paths</td><td>novel clusters from {e(', '.join(f'{k} {v:,}' for k, v in eng['source'].items()))};
 slates from {e(', '.join(f'{k} {v:,}' for k, v in eng['seqrec_path'].items()))}</td></tr>
{"".join(f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in doc.get("facts", {}).items())}
</table>

<h2>Side by side</h2>
<div class="wide"><table><tr><th>method</th>{head}</tr>
{''.join(body)}
</table></div>
<p class="note">All methods at the same {doc['moments']:,} moments. novel hit@{m}: over the {eligible:,} moments whose
user later touched a cluster new to them ({doc['moments'] - eligible:,} without one are left out); 95% CI: bootstrap
over users. liked hit@{m}: the same over the {_count(doc, 'liked')} moments whose next new cluster was first rated at or
above the user's mean rating; sticky hit@{m}: over the {_count(doc, 'sticky')} moments whose user came back to that
cluster at least twice within their next 10 interactions (the judge's target sets). HR@{n}, NDCG@{n} and
hit next {h}: over the {accuracy_n:,} moments with a next interaction. Coverage, entropy (bits) and JSD (bits) describe
all proposals together; the last row is the distribution of the {doc['held_out_novel_transitions']:,} novel-cluster
transitions of the held-out period, which JSD compares with (0 = the same spread, 1 = disjoint). clusters: mean
number of clusters proposed per moment; below {m} where a user knows nearly every cluster (the engine asks the live
LM with the user's exclusions whenever its novelty-table row leaves fewer than {m}).</p>

<h3>How each method chooses</h3>
<ul>
<li><b>{ENGINE}</b>: the engine's own records, its first {m} clusters and first {n} items: with the mixture of experts
 (source "mixture") both from one `explorer` call; else novel clusters from the precomputed table or the live LM,
 then SASRec restricted to them. Sources here: {', '.join(f"{k} {v:,}" for k, v in doc['engine']['source'].items())}.
</li>
<li><b>{EXPLOIT}</b>: the same exported SASRec with every cluster allowed: what the engine would show without the
 exploration step. Its "proposed" clusters are the first {m} distinct clusters of its slate that the user did not
 know.</li>
<li><b>random novel clusters</b>: {m} random clusters the user does not know (seed {doc['seed']}).</li>
<li><b>popular novel clusters</b>: the {m} most frequent targets of novel-cluster transitions before the period
 ({doc['training_novel_transitions']:,} transitions), that the user does not know.</li>
<li><b>transition counts</b>: the most frequent next novel cluster after the user's last {doc['k']} distinct clusters
 in training, backing off to the last cluster alone, then to popularity.</li>
</ul>
<p>Every baseline's slate is the exported SASRec restricted to its {m} clusters, with the items the user has
 already seen removed, as the engine does.</p>

<h3>Protocol</h3>
<p>A moment is one engine record: user u after p interactions (<code>events_applied</code>; the last record per user
and p, from {_day(doc['start_ts'])} on). "Next" is the user's interactions p, p+1, ... in the dataset.
<b>Novel hit@{m}</b>: the first later interaction whose cluster the user had not touched in interactions [0, p) has
its cluster among the {m} proposed. <b>HR@{n} / NDCG@{n}</b>: leave-one-out by time, the target is interaction p's
item, the slate is the method's top {n} after removing every item the user interacted with before the moment (so
this ranks only unseen items, unlike <code>explore seqrec eval</code>, which ranks all items, seen ones included);
NDCG = 1/log2(1 + rank). <b>hit next {h}</b>: any of interactions p .. p+{h - 1} is in the slate; a slate of new
clusters aims at later interests rather than the very next click, so this is the fairer accuracy for exploration.
<b>Novel share</b>: slate items whose cluster the user did not know, over all slate items (the engine's
<code>explore_slate_novel_items_total / explore_slate_items_total</code>).</p>

<h3>Paired: novel hits of the engine against each method</h3>
<table><tr><th>method</th><th>moments hit by the engine only</th><th>by the method only</th>
<th>exact McNemar p</th></tr>{paired}</table>

<h2>Plots</h2>
<h3>Hit rates</h3>
{img('hit_rates.png')}
<p>Left: how often the user's next new cluster was among the proposals, and how much of each slate lies in clusters
new to the user (1.0 for every method that restricts its slate to proposed novel clusters; the exploit-only bar
shows how little plain SASRec explores). Right: accuracy of the slates against the next interaction and the next
{h}. Expect exploit-only SASRec to win accuracy and lose exploration: the question is how much accuracy the
exploration costs, and whether the engine's clusters beat the simple baselines at the same cost.</p>

<h3>Where the proposals go</h3>
{img('proposals.png')}
<p>One panel per method: the share of all its proposals that each cluster received (bars), against the share of
each cluster among the held-out novel transitions (black line). Clusters are sorted by that empirical share, most
common first. Bars piled on the left, far above the line, are a collapse onto popular clusters (low coverage and
entropy, high JSD); bars that follow the line spread proposals the way users actually branch out.</p>

<h3>Engine latency</h3>
{img('latency.png')}
<p>{lat_text}. Latency is measured by the engine (Kafka timestamp of the triggering event to the send of the slate);
when the replay ran as fast as possible it includes the backlog's queueing and says little about a paced load.</p>

<h3>Novel hits by context frequency</h3>
{img('by_context.png')}
<p>Moments grouped by how often their context (last {doc['k']} distinct clusters) occurred among training transitions:
unseen {buckets['unseen']:,}, rare (1-4) {buckets['rare']:,}, common (5+) {buckets['common']:,} moments (the
counts under the bars are those with a later novel cluster). Transition counts can only use what they saw, so the
LM's ability to generalise shows on unseen and rare contexts.</p>

<h2>Reproduce</h2>
<pre>{e(doc['command'])}</pre>
<p class="note">Files next to this report: metrics.json (every number above), {', '.join(e(p) for p in plots)}.
SASRec slates for the exploit-only and baseline rows took {doc['seconds']['slates']:.1f} s (onnxruntime in-process);
the whole report {doc['seconds']['total']:.1f} s.</p>
</body></html>
"""
