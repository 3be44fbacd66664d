"""`explore novelty critics`: every novelty-table variant judged by critics trained on the others' feedback.

1. **Feedback per variant, offline**: on window A, the novelty **validation** period of the data's
   novel transitions (`interests.novelty.examples.split_by_time`; before the test period, never in it),
   the engine's logic proposes from each variant's table and resolves acceptance from what users did
   next (`streams.core.offline_feedback`: the engine's own functions, every event its own batch). The
   acceptance is off-policy: users did what the data says whatever was proposed. The A/B protocol
   (issue #16 item 4) runs the real engine instead.
2. **One critic per variant**: `interests.alignment.model.align` on that variant's feedback.
3. **Generators**: each variant's table as it is, and re-ranked best-of-n by each critic
   (`interests.alignment.best_of_n`), "with alignment".
4. **The matrix** (`interests.alignment.critics`): the mean critic score of each generator's top M over every
   context the tables share (each context once, not weighted by users), with the lift over a random
   pick; the diagonal is the critic that chose the generator's order. Plus mode coverage, and as an
   outside check the off-policy acceptance of each generator on window B, the novelty **test**
   period (only measured there: nothing is fitted or chosen on it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from interests.alignment.best_of_n import best_of_n_rows
from interests.alignment.critics import coverage, critic_matrix, critic_table, entropy_bits, top_m
from interests.alignment.model import AlignmentModel, align, prompt_text
from interests.clusters.catalog import Catalog
from interests.data.datasets import Dataset
from interests.evaluation.stats import bootstrap_difference, bootstrap_interval
from interests.novelty.examples import novel_transitions, split_by_time
from streams.config import EngineConfig
from streams.core.feedback import UNLABELLED, acceptance, labelled_outcomes
from streams.core.offline_feedback import simulate_feedback, table_rows


@dataclass(frozen=True)
class Settings:
    """What the command was asked: M, best-of-n, the alignment model's settings, the catalog level and K."""

    m: int
    best_of: int
    min_events: int
    steps: int
    alpha: float
    level: int
    k: int


def load_tables(specs: Sequence[str], catalog_version: str) -> dict[str, list[dict]]:
    """`NAME=PATH` table files (jsonl rows); every row must come from the catalog judged."""
    out: dict[str, list[dict]] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--table wants NAME=PATH, got {spec!r}")
        rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        other = {r.get("catalog_version") for r in rows} - {catalog_version}
        if other:
            raise ValueError(f"{path}: rows of catalog {sorted(map(str, other))}, not {catalog_version}")
        out[name] = rows
    if len(out) < 2:
        raise ValueError("give at least two --table variants: a critic is judged against the others")
    return out


def windows(ds: Dataset, item_cluster: np.ndarray, k: int) -> dict[str, tuple[float, float]]:
    """Window A (the novelty validation period: feedback for the critics) and B (the test period: the check)."""
    split = split_by_time(novel_transitions(ds, item_cluster, k))
    return {"A": (float(split.cut_valid), float(split.cut_test)), "B": (float(split.cut_test), math.inf)}


def window_json(window: tuple[float, float]) -> list[float | None]:
    """A window as JSON writes it: an open end (window B runs to the data's end) is null, not Infinity."""
    return [window[0], None if window[1] == math.inf else window[1]]


def train_critics(ds: Dataset, catalog: Catalog, tables: dict[str, list[dict]], window: tuple[float, float],
                  cfg: EngineConfig, s: Settings, out: Path) -> tuple[dict[str, AlignmentModel], dict[str, dict]]:
    """One alignment model per variant from that variant's offline feedback on `window` (saved under out/critics)."""
    descriptions, clusters = catalog.descriptions(s.level), catalog.item_clusters(s.level)
    critics, reports = {}, {}
    for name, rows in tqdm(tables.items(), desc="critics", unit="variant"):
        fb = simulate_feedback(ds, clusters, table_rows(rows), descriptions, *window, cfg, {"table": name})
        model, report = align(labelled_outcomes(fb.records), s.min_events, s.steps, s.alpha,
                              meta={"variant": name, "window": window_json(window)})
        model.save(out / "critics" / name)
        critics[name] = model
        reports[name] = {**report, "slates": len(fb.slates), "open_at_end": fb.open_at_end, "no_row": fb.no_row}
    return critics, reports


def generators(tables: dict[str, list[dict]], critics: dict[str, AlignmentModel], descriptions: list[str],
               best_of: int) -> tuple[dict[str, list[dict]], dict[str, str | None], dict[str, str]]:
    """Each variant as it is and re-ranked by each critic: (rows by generator, the critic that chose each
    generator's order, the variant it came from)."""
    rows, own, base = {}, {}, {}
    for v, table in tables.items():
        rows[v], own[v], base[v] = table, None, v
        for c, model in critics.items():
            g = f"{v} + critic {c}"
            rows[g], own[g], base[g] = best_of_n_rows(table, model, descriptions, best_of), c, v
    return rows, own, base


def scorer(model: AlignmentModel, descriptions: list[str]) -> Callable[[tuple[int, ...], int], float]:
    """A critic as `interests.alignment.critics` reads it: (context, candidate) -> the alignment model's score."""
    return lambda ctx, c: model.score(prompt_text([descriptions[i] for i in ctx]), descriptions[c])


def acceptance_check(ds: Dataset, catalog: Catalog, gen_rows: dict[str, list[dict]], base: dict[str, str],
                     window: tuple[float, float], cfg: EngineConfig, level: int) -> dict[str, dict]:
    """Each generator's off-policy acceptance on `window` (accepted over labelled proposals) with a 95 %
    interval by user, by rank, and its difference from the variant it re-ranks (interval by user too)."""
    descriptions, clusters = catalog.descriptions(level), catalog.item_clusters(level)
    outcomes = {}
    for g, rows in tqdm(gen_rows.items(), desc="window B", unit="generator"):
        records = [r for r in simulate_feedback(ds, clusters, table_rows(rows), descriptions, *window, cfg).records
                   if r.outcome not in UNLABELLED]
        outcomes[g] = (np.array([r.accepted for r in records], float), np.array([r.user_id for r in records]),
                       acceptance(records, lambda r: r.rank))
    out = {}
    for g, (hits, users, by_rank) in outcomes.items():
        rate = float(hits.mean()) if len(hits) else math.nan
        out[g] = {"proposals": len(hits), "accepted": int(hits.sum()), "acceptance": rate,
                  "interval": bootstrap_interval(hits, users), "by_rank": {str(k): by_rank[k] for k in sorted(by_rank)}}
        if base[g] != g:
            ref = outcomes[base[g]]
            out[g]["minus_base"] = rate - float(ref[0].mean())
            out[g]["minus_base_interval"] = bootstrap_difference(hits, users, ref[0], ref[1])
    return out


def run(ds: Dataset, catalog: Catalog, tables: dict[str, list[dict]], cfg: EngineConfig, s: Settings,
        out: Path) -> dict:
    """The whole comparison (module docstring); returns the report that `write` saves."""
    cfg = cfg.with_values({"k": s.k, "m": s.m})
    win = windows(ds, catalog.item_clusters(s.level), s.k)
    critics, critic_reports = train_critics(ds, catalog, tables, win["A"], cfg, s, out)
    gen_rows, own, base = generators(tables, critics, catalog.descriptions(s.level), s.best_of)
    traffic = entropy_bits(c.traffic for c in catalog.clusters[s.level])
    return {"settings": vars(s), "catalog_version": catalog.version, "clusters": catalog.levels[s.level],
            "dataset": ds.name, "windows": {w: window_json(x) for w, x in win.items()},
            "critics": critic_reports, "base": base, **score_generators(catalog, tables, critics, gen_rows, own, s),
            "catalog_traffic": {"entropy_bits": traffic, "effective_clusters": 2 ** traffic},
            "window_b": acceptance_check(ds, catalog, gen_rows, base, win["B"], cfg, s.level)}


def score_generators(catalog: Catalog, tables: dict[str, list[dict]], critics: dict[str, AlignmentModel],
                     gen_rows: dict[str, list[dict]], own: dict[str, str | None], s: Settings) -> dict:
    """The matrix and coverage over the contexts every variant's table holds (each context once)."""
    descriptions, n = catalog.descriptions(s.level), catalog.levels[s.level]
    contexts = sorted(set.intersection(*({tuple(r["context"]) for r in t} for t in tables.values())))
    scored = {c: critic_table(scorer(model, descriptions), contexts, n) for c, model in critics.items()}
    shared = set(contexts)
    picks = {g: {ctx: p for ctx, p in top_m(rows, s.m).items() if ctx in shared} for g, rows in gen_rows.items()}
    return {"contexts": len(contexts), "matrix": critic_matrix(picks, scored, own).to_json(),
            "coverage": {g: coverage(p, n) for g, p in picks.items()}}


def _cell_text(report: dict, g: str, c: str) -> str:
    """'score (lift)'; bold on the generator's own critic, a dagger on the critic of its own variant's feedback."""
    x = report["matrix"]["cells"][g][c]
    text = f"{x['score']:.3f} ({x['lift']:+.3f})"
    if report["matrix"]["own"][g] == c:
        return f"**{text}**"
    return f"{text} †" if report["matrix"]["own"][g] is None and report["base"][g] == c else text


def _rate(value: float, interval: Sequence[float], fmt: str = ".3f") -> str:
    """'0.846 (0.82-0.87)': a rate with its 95 % interval."""
    return f"{value:{fmt}} ({interval[0]:{fmt}} to {interval[1]:{fmt}})"


def format_markdown(report: dict) -> str:
    """The critic matrix, the critics' own figures and the window-B check as markdown tables."""
    m, critics = report["matrix"], report["matrix"]["critics"]
    st = report["settings"]
    lines = [f"Critic matrix: mean critic score of each generator's top {st['m']} over {report['contexts']} contexts "
             f"(each once), and its lift over a random pick in brackets; **bold**: the critic that chose the "
             f"generator's order (best of {st['best_of']}), †: the critic trained on the variant's own feedback.", "",
             "| generator | " + " | ".join(f"critic {c}" for c in critics)
             + " | own lift | others' lift | clusters reached | effective clusters | window B acceptance | "
               "minus the variant's |", "|---" * (len(critics) + 7) + "|"]
    for g in m["generators"]:
        cov, b, cross = report["coverage"][g], report["window_b"][g], m["cross"][g]
        own = "-" if cross["own_lift"] != cross["own_lift"] else f"{cross['own_lift']:+.3f}"
        lines.append(f"| {g} | " + " | ".join(_cell_text(report, g, c) for c in critics)
                     + f" | {own} | {cross['other_lift']:+.3f} | {cov['reached']:.0f} | "
                       f"{cov['effective_clusters']:.2f} | {_rate(b['acceptance'], b['interval'])} | "
                       f"{_rate(b['minus_base'], b['minus_base_interval'], '+.3f') if 'minus_base' in b else '-'} |")
    cat = report["catalog_traffic"]
    lines += ["", "Window B (the novelty test period; nothing is fitted or chosen there): off-policy acceptance of "
                  "each generator's proposals, the engine's logic replayed offline, with a 95 % bootstrap interval "
                  "by user; the last column: its difference from the variant it re-ranks (same users, one draw).",
              "", f"Catalog: {report['clusters']} clusters; its interactions spread over "
                  f"{cat['effective_clusters']:.2f} effective clusters ({cat['entropy_bits']:.2f} bits).", "",
              "| critic (feedback of) | slates | outcomes | accepted | groups kept | held-out pairs | "
              "critic orders | LM ranks order |", "|---" * 8 + "|"]
    for c, r in report["critics"].items():
        held, lm = r.get("holdout_pairwise_accuracy"), r.get("holdout_lm_rank_accuracy")
        lines.append(f"| {c} | {r['slates']} | {r['outcomes']} | {r['accepted']} | {r['examples']} | "
                     f"{r.get('holdout_pairs', 0)} | {'-' if held is None else f'{held:.2f}'} | "
                     f"{'-' if lm is None else f'{lm:.2f}'} |")
    return "\n".join(lines) + "\n"


def write(report: dict, out: Path) -> tuple[Path, Path]:
    """critics.json and critics.md in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "critics.json").write_text(json.dumps(report, indent=1))
    (out / "critics.md").write_text(format_markdown(report))
    return out / "critics.json", out / "critics.md"


__all__ = ["Settings", "acceptance_check", "format_markdown", "generators", "load_tables", "run", "train_critics",
           "windows", "write"]
