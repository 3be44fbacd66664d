"""Issue 16 item 3: `explore novelty align` + `explore novelty rerank --publish` on a running engine.

One worker process serves a published novelty table (the LM's own order); feedback that plants a
preference trains an alignment model; the table re-ranked by it is republished while the worker runs.
Without a restart (the same process throughout) the worker's rows change: `/ready` counts them under
the alignment model's version, and the slates of new users list their novel clusters in the new
order and carry that version, as the feedback records of those slates do. What this adds to the unit
tests: the wire (rows with versions through a real broker into the worker's follower), the command
lines as an operator types them, and the running worker picking the rows up.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from explore.cli import main
from interests.alignment.model import AlignmentModel
from streams.config import EngineConfig
from streams.core.feedback import FeedbackRecord
from streams.core.model_files import ModelFiles
from streams.core.recommendation import novel_for_user
from streams.infra.process import wait_until
from streams.infra.worker_process import WorkerProcess
from streams.wiring.replay import Event, produce
from streams.wiring.worker import ensure_topics
from tests.integration.engine.test_engine_resilience import assert_exact_states
from tests.integration.engine.test_feedback import read_to_end
from tests.integration.engine_support import engine_config, item_cluster_map, read_topic, synthetic_events

pytestmark = pytest.mark.integration

HORIZON_EVENTS = 3  # proposals resolve within a few events: the new slates' feedback arrives quickly


def read_rows(path: Path) -> dict[tuple[int, ...], dict]:
    """A table file's rows by context."""
    return {tuple(r["context"]): r for r in map(json.loads, path.read_text().splitlines())}


def planted_feedback(rows: dict[tuple[int, ...], dict], descriptions: list[str], target: int,
                     versions: dict[str, str]) -> list[FeedbackRecord]:
    """One resolved proposal per (context, candidate) of the table: `target` taken up, every other candidate
    not; the records name the catalog they were served with, as the worker's do."""
    out = []
    for context, row in rows.items():
        for rank, c in enumerate(row["clusters"], start=1):
            accepted = c == target
            out.append(FeedbackRecord(
                f"planted-{'-'.join(map(str, context))}/1/{c}", "planted", 1, 0.0,
                [{"id": x, "description": descriptions[x]} for x in context],
                {"id": c, "description": descriptions[c]}, rank, "table", versions, accepted,
                "accepted" if accepted else "horizon", 1, 0.0, None, None))
    return out


def expected_novel(slate: dict, rows: dict[tuple[int, ...], dict], events: list[Event], item_cluster: dict[str, int],
                   m: int) -> list[int]:
    """The novel clusters a table slate must list: its context's row minus what the user knew, first M."""
    history = [e for e in events if e.user_id == slate["user_id"]][:slate["events_applied"]]
    row = rows[tuple(c["id"] for c in slate["context"])]
    return [c for c, _ in novel_for_user(row["clusters"], row["scores"], [item_cluster[e.item_id] for e in history], m)]


def slates_of(cfg: EngineConfig, users: set[str]) -> list[dict]:
    slates = [json.loads(r.value) for r in read_to_end(cfg.bootstrap, cfg.recommendations_topic)]
    return [s for s in slates if s["user_id"] in users]


def test_a_reranked_table_republished_to_a_running_worker_changes_rows_slates_and_feedback(  # type: ignore[no-untyped-def]
        tansu_bootstrap: str, triton, seqrec_artifacts, novelty_artifacts, tmp_path: Path, capsys) -> None:
    cfg = engine_config(tansu_bootstrap, seqrec_artifacts, triton.repository, triton.grpc,
                        data_dir=str(tmp_path / "data"), feedback_horizon_events=HORIZON_EVENTS)
    ensure_topics(cfg)
    catalog_dir = Path(cfg.catalog)
    descriptions = seqrec_artifacts.catalog.descriptions()
    worker_versions = ModelFiles(Path(cfg.repository), seqrec_artifacts.catalog, cfg.k).versions
    item_cluster = item_cluster_map(seqrec_artifacts)
    publish = ["--publish", "--topic", cfg.novelty_topic, "--bootstrap", tansu_bootstrap]
    table = tmp_path / "table.jsonl"
    lm_dir = str(novelty_artifacts.lm.save(tmp_path / "lm"))
    assert main(["novelty", "precompute", "--model", lm_dir, "--all-contexts", "--out", str(table), "--quiet",
                 *publish]) == 0
    lm_rows = read_rows(table)
    events = synthetic_events(seqrec_artifacts.dataset, n_users=40, max_per_user=12)
    users = sorted({e.user_id for e in events})
    before, after = set(users[::2]), set(users[1::2])

    with WorkerProcess(cfg, tmp_path) as worker:
        pid = worker.proc.pid
        first = [e for e in events if e.user_id in before]
        produce(tansu_bootstrap, cfg.interactions_topic, [e.encode() for e in first], rate=500, progress=False)
        assert_exact_states(worker, first, item_cluster, cfg.k)
        old = [s for s in slates_of(cfg, before) if s["source"] == "table"]
        assert old and all(s["versions"] == worker_versions for s in old)
        assert all([c["id"] for c in s["novel_clusters"]] == expected_novel(s, lm_rows, first, item_cluster, cfg.m)
                   for s in old)

        # Plant a preference against the LM: the cluster it ranks last most often is the one users take up.
        target = Counter(r["clusters"][-1] for r in lm_rows.values()).most_common(1)[0][0]
        feedback = tmp_path / "feedback.jsonl"
        feedback.write_text("".join(r.encode().decode() + "\n" for r in
                                    planted_feedback(lm_rows, descriptions, target, worker_versions)))
        assert main(["novelty", "align", "--feedback", str(feedback), "--min-events", "1",
                     "--out", str(tmp_path / "align")]) == 0
        model = AlignmentModel.load(tmp_path / "align")
        depth = max(len(r["clusters"]) for r in lm_rows.values())
        capsys.readouterr()
        aligned = tmp_path / "aligned.jsonl"
        # --min-pairs 0: the planted feedback leaves ~15 held-out pairs, below the guard's 20 (its own unit tests).
        assert main(["novelty", "rerank", "--table", str(table), "--catalog", str(catalog_dir), "--align",
                     str(tmp_path / "align"), "--best-of", str(depth), "--out", str(aligned), "--min-pairs", "0",
                     *publish]) == 0
        new_rows = read_rows(aligned)
        changed = [c for c in lm_rows if new_rows[c]["clusters"] != lm_rows[c]["clusters"]]
        assert f"{len(changed):,} changed order" in capsys.readouterr().out
        holding = [c for c in lm_rows if target in lm_rows[c]["clusters"]]
        assert changed and all(new_rows[c]["clusters"][0] == target for c in holding)  # the preference took
        row_versions = {"alignment": model.version, "best_of": str(depth)}
        assert all(r["versions"] == row_versions for r in new_rows.values())
        fresh = tmp_path / "fresh.jsonl"  # a fresh table re-ranked as it is decoded: the same rows
        assert main(["novelty", "precompute", "--model", lm_dir, "--all-contexts", "--out", str(fresh), "--quiet",
                     "--align", str(tmp_path / "align"), "--best-of", str(depth), "--min-pairs", "0"]) == 0
        assert read_rows(fresh) == new_rows

        # (a) the running worker's rows change: every row now carries the alignment model's version.
        wait_until(lambda: worker.get("/ready")[1].get("novelty_versions") ==
                   [{"versions": row_versions, "rows": len(new_rows)}], 30, "the republished rows in the worker",
                   worker.proc, interval_s=0.25)
        second = [e for e in events if e.user_id in after]
        produce(tansu_bootstrap, cfg.interactions_topic, [e.encode() for e in second], rate=500, progress=False)
        assert_exact_states(worker, second, item_cluster, cfg.k)
        new = [s for s in slates_of(cfg, after) if s["source"] == "table"]
        merged = {**worker_versions, **row_versions}
        # (b) new slates list their clusters in the new order and carry the new versions; some order changed.
        assert new and all(s["versions"] == merged for s in new)
        assert all([c["id"] for c in s["novel_clusters"]] == expected_novel(s, new_rows, second, item_cluster, cfg.m)
                   for s in new)
        assert any(expected_novel(s, new_rows, second, item_cluster, cfg.m) !=
                   expected_novel(s, lm_rows, second, item_cluster, cfg.m) for s in new)
        # ... and so do the feedback records of those slates.
        records = read_topic(tansu_bootstrap, cfg.feedback_topic, lambda rs: any(
            json.loads(r.value)["source"] == "table" and json.loads(r.value)["user_id"] in after for r in rs),
            timeout_s=30)
        got = [json.loads(r.value) for r in records]
        slate_versions = {(s["user_id"], s["events_applied"]): s["versions"] for s in slates_of(cfg, before | after)}
        assert any(d["versions"] == merged for d in got)
        assert all(d["versions"] == slate_versions[(d["user_id"], d["slate"])] for d in got)
        # (c) no restart: the same worker process served both tables.
        assert worker.alive() and worker.proc.pid == pid
        print(f"\n#16 best-of-{depth} republish: {len(changed)} of {len(new_rows)} rows changed order; slates "
              f"{len(old)} before, {len(new)} after; {len(got)} feedback records")
