"""What `explore loop ab` reports: acceptance on period B per arm and paired, and the judge on B's moments.

Pure (no Kafka, no models): slates and feedback records in, numbers and text out.

- **Proposals** are read from the arm's slates (`recommendations`), not only from its feedback: a
  proposal still open when the data ends (the user did not come back within the horizon) has no
  feedback record, and leaving it out would count only the proposals that resolved, which favours
  accepted ones (they resolve early). Here every proposal of a B slate counts: accepted when its
  feedback record says so, not accepted otherwise (resolved not accepted, evicted, or still open;
  each is counted).
- **Intervals**: percentile bootstrap resampling *users* (`interests.evaluation.stats.bootstrap_interval`; a
  user's proposals are not independent), 1,000 rounds, 95 %.
- **Paired**: both arms make their slates at the same moments (one event per micro-batch), so the
  slates are matched by (user, events applied); on the matched ones the difference in acceptance
  gets a paired bootstrap interval over users, and "a slate with a proposal taken up" the exact
  McNemar test (`interests.evaluation.stats.paired`).
- **The judge** (`interests.evaluation.judge.judge_level`): every novel-cluster moment of B (a user about to
  touch a cluster for the first time) scored by each table's order for its context, the user's known
  clusters removed, top M: hit rates with intervals, and McNemar of the aligned table against the LM's.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

import numpy as np

from interests.evaluation.stats import bootstrap_interval, paired

ROUNDS = 1000
TARGETS = ("any", "liked", "sticky")


def proposals(slates: Sequence[dict], feedback: Sequence, since: float) -> list[dict]:
    """Every proposed cluster of the slates made at or after `since` (each slate once: the topic is
    written at least once), with its fate from the feedback records (`open`: none yet)."""
    fate = {r.feedback_id: r.outcome for r in feedback}
    seen: set[tuple[str, int]] = set()
    out = []
    for s in slates:
        key = (s["user_id"], int(s["events_applied"]))
        if s["event_ts"] < since or key in seen:
            continue
        seen.add(key)
        for rank, c in enumerate(s["novel_clusters"], start=1):
            outcome = fate.get(f"{key[0]}/{key[1]}/{c['id']}", "open")
            out.append({"user": key[0], "slate": key[1], "rank": rank, "cluster": int(c["id"]),
                        "source": s["source"], "outcome": outcome, "accepted": outcome == "accepted"})
    return out


def state_resets(slates: Sequence[dict], inputs: Sequence[tuple[int, int, str]]) -> list[str]:
    """Users with a slate whose `events_applied` is not the number of their records on the input topic up to
    the slate's input offset (`inputs`: every (partition, offset, user) of that topic): the worker lost, or
    applied twice, part of their state. The loop's events are all valid (none goes to the dead-letter topic),
    so the two counts agree wherever the state is whole.

    Seen right after a worker restart on the embedded Tansu (the loop restarts each arm's worker once, to
    change its batch size): Tansu reports a changelog partition's end below its last records, and the
    restarted worker's recovery stops there. The user then comes back with an older state: its count can fall
    from one slate to the next, or only lag behind, when the lost events made no slate. Not seen on Apache
    Kafka. Such a user's later slates match no slate of the other arm."""
    offsets: dict[tuple[int, str], list[int]] = {}
    for partition, offset, user in inputs:
        offsets.setdefault((partition, user), []).append(offset)
    for marks in offsets.values():
        marks.sort()
    out = set()
    for s in slates:
        partition, offset = s["input"]
        user = s["user_id"]
        if bisect_right(offsets.get((partition, user), []), offset) != int(s["events_applied"]):
            out.add(user)
    return sorted(out)


def rate(accepted: Sequence[bool], users: Sequence[str], seed: int = 0) -> dict:
    """Share accepted with its bootstrap interval over users."""
    hits = np.asarray(accepted, dtype=np.int8)
    _, ids = np.unique(np.asarray(users, dtype=object).astype(str), return_inverse=True)
    lo, hi = bootstrap_interval(hits, ids, rounds=ROUNDS, seed=seed)
    return {"n": len(hits), "accepted": int(hits.sum()), "rate": float(hits.mean()) if len(hits) else float("nan"),
            "ci95": [lo, hi]}


def arm_summary(props: list[dict], m: int, seed: int = 0) -> dict:
    """One arm's acceptance: all proposals, by rank, by fate, per slate (any proposal taken up), and over the
    resolved ones only (accepted / (accepted + horizon): `explore_feedback_total`'s ratio, which leaves out
    evicted and open proposals and so leans towards accepted ones, which resolve early)."""
    users = [p["user"] for p in props]
    slates: dict[tuple[str, int], bool] = {}
    for p in props:
        slates[(p["user"], p["slate"])] = slates.get((p["user"], p["slate"]), False) or p["accepted"]
    by_rank = {r: rate([p["accepted"] for p in props if p["rank"] == r], [p["user"] for p in props if p["rank"] == r],
                       seed) for r in range(1, m + 1)}
    resolved = [p for p in props if p["outcome"] in ("accepted", "horizon")]
    return {"slates": len(slates), "proposals": rate([p["accepted"] for p in props], users, seed), "by_rank": by_rank,
            "resolved": rate([p["accepted"] for p in resolved], [p["user"] for p in resolved], seed),
            "outcomes": {o: sum(p["outcome"] == o for p in props) for o in ("accepted", "horizon", "evicted", "open")},
            "sources": {s: sum(p["source"] == s for p in props) for s in sorted({p["source"] for p in props})},
            "slates_taken_up": rate(list(slates.values()), [u for u, _ in slates], seed)}


def paired_difference(a_hits: np.ndarray, a_n: np.ndarray, b_hits: np.ndarray, b_n: np.ndarray, users: np.ndarray,
                      seed: int = 0) -> tuple[float, float, float]:
    """Acceptance of A minus B over the same units (slates), and its bootstrap interval resampling users:
    each unit gives accepted counts and proposal counts of both arms."""
    _, ids = np.unique(users, return_inverse=True)
    per = [np.bincount(ids, weights=x.astype(np.float64)) for x in (a_hits, a_n, b_hits, b_n)]
    draws = np.random.default_rng(seed).integers(0, len(per[0]), size=(ROUNDS, len(per[0])))
    diff = per[0][draws].sum(1) / per[1][draws].sum(1) - per[2][draws].sum(1) / per[3][draws].sum(1)
    lo, hi = np.percentile(diff, [2.5, 97.5])
    return float(a_hits.sum() / a_n.sum() - b_hits.sum() / b_n.sum()), float(lo), float(hi)


def paired_arms(treated: list[dict], control: list[dict], seed: int = 0) -> dict:
    """The two arms on the slates both made: acceptance difference (treated - control) with its paired
    interval, slates taken up (McNemar), and how often the arms proposed other clusters or another order."""
    def by_slate(props: list[dict]) -> dict[tuple[str, int], list[dict]]:
        out: dict[tuple[str, int], list[dict]] = {}
        for p in props:
            out.setdefault((p["user"], p["slate"]), []).append(p)
        return out

    t, c = by_slate(treated), by_slate(control)
    common = sorted(set(t) & set(c))
    out: dict = {"common_slates": len(common), "only_treated": len(set(t) - set(c)),
                 "only_control": len(set(c) - set(t))}
    if not common:
        return out
    count = lambda slates, f: np.array([sum(f(p) for p in slates[k]) for k in common])  # noqa: E731
    diff, lo, hi = paired_difference(count(t, lambda p: p["accepted"]), count(t, lambda p: 1),
                                     count(c, lambda p: p["accepted"]), count(c, lambda p: 1),
                                     np.array([u for u, _ in common]), seed)
    up = [np.array([any(p["accepted"] for p in s[k]) for k in common], dtype=np.int8) for s in (t, c)]
    clusters = [[tuple(p["cluster"] for p in s[k]) for k in common] for s in (t, c)]
    return {**out, "acceptance_difference": diff, "ci95": [lo, hi], "slates_taken_up": paired(up[0], up[1]),
            "other_clusters": float(np.mean([set(a) != set(b) for a, b in zip(*clusters, strict=True)])),
            "other_order": float(np.mean([a != b for a, b in zip(*clusters, strict=True)]))}


def table_scores(rows: Sequence[dict], contexts: np.ndarray, n_clusters: int) -> np.ndarray:
    """[moments, clusters]: a table's order as scores (first ranked highest); clusters a context's row
    does not list, and contexts without a row, are -inf (never proposed: the judge counts a miss)."""
    index = {tuple(r["context"]): r["clusters"] for r in rows}
    out = np.full((len(contexts), n_clusters), -np.inf)
    for i, ctx in enumerate(contexts.tolist()):
        ranked = index.get(tuple(ctx), [])
        out[i, ranked] = len(ranked) - np.arange(len(ranked))
    return out


def judge_tables(ds, item_cluster: np.ndarray, k: int, m: int, cut, tables: dict[str, list[dict]],  # type: ignore[no-untyped-def]
                 seed: int = 0) -> dict:
    """The judge's hit rates of each table on period B's novel-cluster moments (the first table is the
    reference the others are tested against); the training period and A give the context buckets."""
    from interests.evaluation.judge import judge_level, target_masks
    from interests.novelty.examples import TimeSplit, novel_transitions

    ex = novel_transitions(ds, item_cluster, k)
    t = ex.timestamps
    split = TimeSplit(ex.subset(np.flatnonzero(t < cut.a_start)),
                      ex.subset(np.flatnonzero((t >= cut.a_start) & (t < cut.b_start))),
                      ex.subset(np.flatnonzero(t >= cut.b_start)), int(cut.a_start), int(cut.b_start))
    if not len(split.test):
        return {"moments": 0}
    n = int(item_cluster.max()) + 1
    names = list(tables)
    scores = {name: table_scores(rows, split.test.contexts, n) for name, rows in tables.items()}
    result = judge_level(0, n, split, target_masks(ds, item_cluster, split.test), scores, set(names[1:]), m,
                         split.test.targets, seed)
    methods = {name: {target: {key: row[key] for key in ("hit", "ci95", "vs_best") if key in row}
                      for target, row in r.rows.items()} for name, r in result.methods.items()}
    return {"moments": result.moments, "counts": result.counts, "reference": names[0], "methods": methods}


def build_report(arms: dict[str, dict], cut, judged: dict, alignment: dict, m: int, seed: int = 0) -> dict:  # type: ignore[no-untyped-def]
    """Every number of the A/B: per arm, paired (aligned against the LM's table), the judge, the alignment."""
    props = {name: proposals(a["slates"], a["feedback"], cut.b_start) for name, a in arms.items()}
    return {"periods": {"a_start": cut.a_start, "b_start": cut.b_start},
            "arms": {name: arm_summary(p, m, seed) for name, p in props.items()},
            "state_resets": {name: state_resets(a["slates"], a["inputs"]) for name, a in arms.items()},
            "paired": paired_arms(props["aligned"], props["lm"], seed), "judge": judged,
            "alignment": {k: v for k, v in alignment.items() if not isinstance(v, dict | list)},
            "seconds_per_arm": {name: a["seconds"] for name, a in arms.items()}}


OFF_POLICY = ("Acceptance here is off-policy: the replayed users did what the data set says they did, whatever "
              "slate the engine showed. \"Accepted\" means the user went to a proposed cluster anyway (within the "
              "horizon), which says how well the proposals anticipate the next new interest, not whether showing "
              "them made anyone go there.")


def _ci(r: dict) -> str:
    return f"{r['rate']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] (n {r['n']:,})"


def format_report(report: dict) -> str:
    """The A/B table as markdown (printed, and written to ab.md)."""
    lm, al = report["arms"]["lm"], report["arms"]["aligned"]
    best = report["settings"]["best_of"]
    settings = report["settings"]
    lines = [f"## Offline A/B of the feedback loop: {settings['dataset']}", "",
             f"Horizon: {settings.get('horizon_events')} events or {settings.get('horizon_s')} s of event time; "
             f"{settings.get('max_open', '?')} open slates a user" + "".join(
                 f"; {k} = {v}" for k, v in settings.get("engine_settings", {}).items()
                 if k not in ("feedback_horizon_events", "feedback_horizon_s", "feedback_max_open")) + ".", "",
             f"| period B | LM table | aligned (best-of-{best}) |", "|---|---|---|",
             f"| slates | {lm['slates']:,} | {al['slates']:,} |",
             f"| acceptance, every proposal | {_ci(lm['proposals'])} | {_ci(al['proposals'])} |"]
    lines += [f"| acceptance at rank {r} | {_ci(lm['by_rank'][r])} | {_ci(al['by_rank'][r])} |" for r in lm["by_rank"]]
    lines.append(f"| acceptance, resolved proposals only (the engine's ratio) | {_ci(lm['resolved'])} | "
                 f"{_ci(al['resolved'])} |")
    lines.append(f"| slates with a proposal taken up | {_ci(lm['slates_taken_up'])} | {_ci(al['slates_taken_up'])} |")
    fates = lambda a: ", ".join(f"{k} {v:,}" for k, v in a["outcomes"].items())  # noqa: E731
    lines.append(f"| proposals by fate | {fates(lm)} | {fates(al)} |")
    judge = report["judge"]
    for target in TARGETS:
        rows = [judge.get("methods", {}).get(name, {}).get(target) for name in judge.get("methods", {})]
        if len(rows) == 2 and all(rows):
            cells = [f"{r['hit']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]" for r in rows]
            lines.append(f"| judge: hit rate, {target} ({judge['counts'][target]:,} moments) | {cells[0]} | "
                         f"{cells[1]} |")
    p = report["paired"]
    lines += ["", f"Paired on the {p['common_slates']:,} slates both arms made (only one arm: {p['only_treated']} + "
              f"{p['only_control']})" + (":" if "ci95" not in p else
              f": acceptance aligned - LM {p['acceptance_difference']:+.4f} [{p['ci95'][0]:+.4f}, {p['ci95'][1]:+.4f}] "
              f"(paired bootstrap over users); slates with a proposal taken up +{p['slates_taken_up']['won']} / "
              f"-{p['slates_taken_up']['lost']} (exact McNemar p = {p['slates_taken_up']['p']:.3g}); the aligned arm "
              f"proposed other clusters on {p['other_clusters']:.1%} of them, another order on "
              f"{p['other_order']:.1%}.")]
    resets = report["state_resets"]
    if any(resets.values()):
        lines.append("Users whose state the restarted worker did not recover (a slate's count of applied events is "
                     "not their records on the input topic; the broker reported a changelog's end below its last "
                     "records; their later slates pair with nothing): "
                     + "; ".join(f"{arm} {len(users)} ({', '.join(users[:5])})" for arm, users in resets.items()) + ".")
    for target in TARGETS:
        vs = next((r[target]["vs_best"] for r in judge.get("methods", {}).values()
                   if target in r and "vs_best" in r[target]), None)
        if vs:
            lines.append(f"Judge, {target}: aligned against the LM's table +{vs['won']} / -{vs['lost']} moments "
                         f"(McNemar p = {vs['p']:.3g}).")
    a = report["alignment"]
    held = a.get("holdout_pairwise_accuracy")
    lines += ["", f"Alignment, trained on period A only: {a['outcomes']:,} labelled proposals ({a['accepted']:,} "
              f"accepted), {a['examples']:,} (context, candidate) groups with at least {a['min_events']} over "
              f"{a['contexts']:,} contexts; best-of-{best} re-ordered {a['rows_reordered']:,} of {a['rows']:,} rows"
              + ("" if held is None else "; A's held-out contexts had no candidate pairs with different labels to "
                 "check it on" if not a.get("holdout_pairs") else f"; on A's held-out contexts it orders {held:.3f} "
                 f"of {a['holdout_pairs']} candidate pairs as their labels, the LM's ranks "
                 f"{a.get('holdout_lm_rank_accuracy', float('nan')):.3f}") + ".",
              "", OFF_POLICY]
    return "\n".join(lines)
