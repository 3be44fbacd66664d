"""`build_report` and `explore report` end to end on the small SASRec that conftest trains and exports.

No broker: the engine's records are fabricated from the popular-novel-cluster baseline (table lookups
and slates through the same exported graph), so the engine's row must equal that baseline's, and the
novel hit rate is recomputed here with plain loops.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from explore.report import ENGINE, build_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
M, N = 3, 10


def _records(ds, item_cluster: np.ndarray, repository: Path, start_ts: float) -> list[dict]:  # type: ignore[no-untyped-def]
    """Engine-like records from the popular baseline, every other position of the held-out period."""
    from interests.novelty.examples import novel_transitions
    from interests.novelty.rules import popular_scores, top_m
    from streams.inference.seqrec import OnnxSeqRec, pad_histories

    meta = json.loads((repository / "seqrec" / "1" / "meta.json").read_text())
    ex = novel_transitions(ds, item_cluster, 2)
    train = ex.subset(np.flatnonzero(ex.timestamps < start_ts))
    n_clusters = int(item_cluster.max()) + 1
    seqrec = OnnxSeqRec(repository / "seqrec" / "1" / "model.onnx")
    off = ds.offsets
    out = []
    for u in range(ds.n_users):
        seq, stamps = ds.items[off[u]:off[u + 1]], ds.timestamps[off[u]:off[u + 1]]
        for p in range(1, len(seq) + 1, 2):
            known = set(item_cluster[seq[:p]].tolist())
            if stamps[p - 1] < start_ts or len(known) < 2:
                continue
            clusters = top_m(popular_scores(train, n_clusters, 1), [known], M)[0]
            if not clusters:
                continue
            allowed = np.zeros((1, n_clusters), bool)
            allowed[0, clusters] = True
            items, scores = seqrec.top_n(pad_histories([seq[:p] + 1], meta["max_len"]), allowed)
            slate = [int(i) - 1 for i, s in zip(items[0], scores[0], strict=True)
                     if s > -5e8 and int(i) - 1 not in set(seq[:p].tolist())][:N]
            out.append({"user_id": str(ds.user_ids[u]), "context": [],
                        "novel_clusters": [{"id": c, "description": "", "score": -1.0} for c in clusters],
                        "slate": [{"item_id": str(ds.item_ids[i]), "cluster": int(item_cluster[i]), "score": 0.0}
                                  for i in slate],
                        "source": "table", "seqrec_path": "onnx", "versions": {"seqrec": "abc", "catalog": "def"},
                        "event_ts": float(stamps[p - 1]), "events_applied": p, "latency_ms": 5.0 + p % 7})
    return out


@pytest.fixture(scope="module")
def setup(seqrec_artifacts, tiny_repository: Path):  # type: ignore[no-untyped-def]
    ds = seqrec_artifacts.dataset
    catalog_dir = Path(seqrec_artifacts.checkpoint).parent / "catalog"
    level = json.loads((tiny_repository / "seqrec" / "1" / "meta.json").read_text())["level"]
    item_cluster = seqrec_artifacts.catalog.item_clusters(level).astype(np.int64)
    start_ts = float(np.quantile(ds.timestamps, 0.8))
    records = _records(ds, item_cluster, tiny_repository, start_ts)
    first = records[0]
    stale = {**first, "novel_clusters": [{"id": 0, "description": "", "score": 0.0}]}  # superseded by `first`
    early = {**first, "event_ts": start_ts - 1000.0}  # before the period (so ignored, whatever its position)
    return ds, catalog_dir, item_cluster, start_ts, [early, stale, *records]


def test_report_files_and_numbers(setup, tiny_repository: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ds, catalog_dir, item_cluster, start_ts, records = setup
    path = build_report(ds, catalog_dir, tiny_repository, records, start_ts, tmp_path / "report", m=M, n=N,
                        progress=False, command="explore report ...")
    assert path == tmp_path / "report" / "report.html" and path.is_file()
    from matplotlib.image import imread

    for name in ("hit_rates.png", "proposals.png", "latency.png", "by_context.png"):
        png = tmp_path / "report" / name
        assert png.read_bytes()[:8] == PNG_MAGIC, name
        height, width = imread(png).shape[:2]
        assert height > 200 and width > 400, (name, height, width)
    text = path.read_text()
    assert text.count("data:image/png;base64,") == 4 and "explore report ..." in text
    assert ENGINE in text and "transition counts" in text

    doc = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert doc["records"] == {"given": len(records), "evaluated": len(records) - 2, "before_start": 1,
                              "superseded": 1, "unknown_user_or_position": 0}
    assert doc["moments"] == len(records) - 2

    # the novel hit rate and HR@N of the engine's records, recomputed here
    off = ds.offsets
    user = {str(u): i for i, u in enumerate(ds.user_ids)}
    hits, accurate = [], []
    for rec in records[2:]:
        u, p = user[rec["user_id"]], rec["events_applied"]
        seq = ds.items[off[u]:off[u + 1]]
        known = set(item_cluster[seq[:p]].tolist())
        later = [c for c in item_cluster[seq[p:]].tolist() if c not in known]
        if later:
            hits.append(later[0] in [c["id"] for c in rec["novel_clusters"]])
        if p < len(seq):
            accurate.append(str(ds.item_ids[seq[p]]) in [x["item_id"] for x in rec["slate"]])
    engine = doc["methods"][ENGINE]
    assert engine["novel_moments"] == len(hits) > 20
    assert engine["novel_hit"] == pytest.approx(np.mean(hits))
    assert engine[f"HR@{N}"] == pytest.approx(np.mean(accurate))
    assert engine["novel_share"] == 1.0 and engine["proposed"] <= M

    # records made from the popular baseline score exactly as the baseline does at the same moments
    popular = doc["methods"]["popular novel clusters"]
    for key, value in engine.items():
        assert value == popular[key] if value is None else value == pytest.approx(popular[key]), key
    assert doc["paired_novel_hit_vs_engine"]["popular novel clusters"]["engine_only"] == 0
    assert doc["latency_ms"]["count"] == len(records) - 2
    assert doc["versions"] == {"seqrec": ["abc"], "catalog": ["def"]}


def test_explore_report_command(setup, tiny_repository: Path, tmp_path: Path,  # type: ignore[no-untyped-def]
                                capsys: pytest.CaptureFixture[str]) -> None:
    ds, catalog_dir, _, start_ts, records = setup
    inter, items = tmp_path / "interactions.csv", tmp_path / "items.csv"
    with inter.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user", "item", "timestamp"])
        w.writerows(zip(ds.user_ids[ds.users], ds.item_ids[ds.items], ds.timestamps.tolist(), strict=True))
    with items.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item", "title"])
        w.writerows(zip(ds.item_ids, ds.item_text["title"], strict=True))
    recs = tmp_path / "recs.jsonl"
    recs.write_text("".join(json.dumps(r) + "\n" for r in records) + "\n")
    from explore.cli import main

    rc = main(["report", "--interactions", str(inter), "--items", str(items), "--catalog", str(catalog_dir),
               "--repository", str(tiny_repository), "--recommendations", str(recs), "--start-ts", str(start_ts),
               "--out", str(tmp_path / "out"), "--m", str(M), "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0, out
    doc = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert doc["moments"] == len(records) - 2
    assert f"report: {tmp_path / 'out' / 'report.html'}" in out
    engine_line = next(line for line in out.splitlines() if line.startswith(ENGINE))
    assert f"{doc['methods'][ENGINE]['novel_hit']:.3f}" in engine_line

    recs.write_text("{not json\n")
    assert main(["report", "--interactions", str(inter), "--items", str(items), "--catalog", str(catalog_dir),
                 "--repository", str(tiny_repository), "--recommendations", str(recs),
                 "--out", str(tmp_path / "bad"), "--quiet"]) == 1
    assert "row 1: not JSON" in capsys.readouterr().err


def test_report_adds_sasrec_explores_on_the_same_moments(setup, seqrec_artifacts, tiny_repository: Path,  # type: ignore[no-untyped-def]
                                                         tmp_path: Path) -> None:
    """With the served SASRec's checkpoint the report adds 'SASRec explores', proposing per moment the top M
    unknown clusters by the next-item probabilities summed per cluster (recomputed here with plain loops),
    paired with the engine; a checkpoint that trained on the reported period is refused."""
    import torch

    from explore.report import SEQREC_EXPLORES
    from interests.clusters.catalog import CatalogError
    from interests.evaluation.replay import moments_at, select_records
    from interests.seqrec.train import load_checkpoint, next_item_probabilities

    ds, catalog_dir, item_cluster, start_ts, records = setup
    ckpt = torch.load(seqrec_artifacts.checkpoint, weights_only=True)
    good, bad = tmp_path / "good.pt", tmp_path / "bad.pt"
    torch.save({**ckpt, "item_ids": [str(i) for i in ds.item_ids], "trained_until": int(start_ts)}, good)
    torch.save({**ckpt, "item_ids": [str(i) for i in ds.item_ids], "trained_until": int(start_ts) + 10**6}, bad)
    build_report(ds, catalog_dir, tiny_repository, records, start_ts, tmp_path / "r", m=M, n=N, progress=False,
                 seqrec_checkpoint=good)
    doc = json.loads((tmp_path / "r" / "metrics.json").read_text())
    row = doc["methods"][SEQREC_EXPLORES]
    assert SEQREC_EXPLORES in doc["paired_novel_hit_vs_engine"]

    sel = select_records(records, ds, start_ts)
    mo = moments_at(ds, item_cluster, sel.users, sel.positions, 2, 10)
    probs = next_item_probabilities(load_checkpoint(good)[0])
    n_clusters = int(item_cluster.max()) + 1
    hits = []
    for i in range(len(mo)):
        p = probs([mo.histories[i]])[0]
        mass = [p[item_cluster == c].sum() for c in range(n_clusters)]
        order = sorted((c for c in range(n_clusters) if c not in mo.known[i]), key=lambda c: (-mass[c], c))[:M]
        if mo.next_novel[i] >= 0:
            hits.append(int(mo.next_novel[i]) in order)
    assert row["novel_moments"] == len(hits) and row["novel_hit"] == pytest.approx(np.mean(hits))
    with pytest.raises(CatalogError, match="after the report's start"):
        build_report(ds, catalog_dir, tiny_repository, records, start_ts, tmp_path / "r2", m=M, n=N,
                     progress=False, seqrec_checkpoint=bad)


def test_the_reports_baselines_are_the_judges_on_the_same_moments(setup, tiny_repository: Path,  # type: ignore[no-untyped-def]
                                                                   tmp_path: Path) -> None:
    """Random, popular and transition counts have one implementation (`interests.novelty.rules`): the engine
    report's hit rates of its three baselines equal the judge's (`judge_level`) on the report's own moments."""
    from explore.report import BASELINES
    from interests.evaluation.judge import judge_level
    from interests.evaluation.replay import moments_at, select_records, training_transitions
    from interests.novelty.examples import NoveltyExamples, TimeSplit
    from interests.novelty.rules import POPULAR, RANDOM, TRANSITIONS, baseline_scores

    ds, catalog_dir, item_cluster, start_ts, records = setup
    build_report(ds, catalog_dir, tiny_repository, records, start_ts, tmp_path / "r", m=M, n=N, progress=False)
    doc = json.loads((tmp_path / "r" / "metrics.json").read_text())

    sel = select_records(records, ds, start_ts)
    mo = moments_at(ds, item_cluster, sel.users, sel.positions, 2, 10)
    train, _ = training_transitions(ds, item_cluster, 2, start_ts)
    n_clusters = int(item_cluster.max()) + 1
    scored = np.flatnonzero(mo.next_novel >= 0)  # the judge counts moments with a next new cluster
    test = NoveltyExamples(mo.contexts[scored].astype(np.int32), mo.next_novel[scored].astype(np.int32),
                           [mo.known[i] for i in scored], mo.users[scored].astype(np.int32),
                           np.zeros(len(scored), np.int64), mo.next_novel_row[scored])
    split = TimeSplit(train, train.subset(np.arange(0)), test, int(start_ts), int(start_ts))
    scores = {name: np.asarray(s)[scored] for name, s in baseline_scores(train, n_clusters, mo.contexts).items()}
    judged = judge_level(0, n_clusters, split, {"any": np.ones(len(scored), bool)}, scores, set(), M, test.targets)
    for name, label in zip((RANDOM, POPULAR, TRANSITIONS), BASELINES, strict=True):
        row = doc["methods"][label]
        assert row["novel_moments"] == len(scored) > 20
        assert judged.methods[name].rows["any"]["hit"] == pytest.approx(row["novel_hit"]), name
