"""What the worker does with a micro-batch of interactions, apart from Kafka itself.

`Engine` holds the catalog maps, the model router (Triton with the in-process fallback), the
novelty table and the metrics; `Engine.handle` turns a batch of raw records into state updates,
dead-letter records, novelty-table fills and recommendations. The Faust wiring (`streams.app`)
only feeds it batches and writes what it returns, so everything here runs in unit tests without
a broker (the models can be the in-process twins).

Per batch, whatever its size, the models see at most three calls: one `interest_generator` call
for the contexts missing from the table, one for users whose table clusters are all known to them,
and one `seqrec` call for every slate of the batch. That is what lets the worker keep up: the cost
per event is parsing and a dict update, the cost per model call is shared by the batch.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from interests.catalog import Catalog, CatalogError
from interests.constrained import EXCLUDED
from streams.config import EngineConfig
from streams.inference.router import ModelRouter
from streams.inference.seqrec import pad_histories
from streams.metrics import Metrics
from streams.novelty_table import context_key
from streams.records import Limits, Rejection, parse_interaction
from streams.state import apply, copy_state, needs_slate, novel_from_table, slate_items


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One input record as Kafka delivered it (timestamp in seconds, from the record)."""

    key: bytes | None
    value: bytes | None
    partition: int
    offset: int
    timestamp: float


@dataclass
class BatchResult:
    """What the Kafka side must write for one batch, in this order, before acking it."""

    dlq: list[tuple[RawRecord, Rejection]] = field(default_factory=list)
    table_fills: list[tuple[bytes, bytes]] = field(default_factory=list)  # novelty topic key, value
    recommendations: list[tuple[bytes, bytes, float]] = field(default_factory=list)  # key, value, trigger ts
    states: dict[str, tuple[dict, RawRecord]] = field(default_factory=dict)  # user -> state, its last record
    applied: int = 0
    duplicates: int = 0


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


def _pbtxt_param(config: Path, name: str, default: str) -> str:
    """A `parameters` value of a Triton config.pbtxt (the local twin must decode like the server)."""
    text = config.read_text() if config.is_file() else ""
    found = re.search(r'key:\s*"' + re.escape(name) + r'"\s*,\s*value:\s*\{\s*string_value:\s*"([^"]*)"', text)
    return found.group(1) if found else default


class ModelFiles:
    """The exported models a worker serves, read from a Triton repository, with their versions."""

    def __init__(self, repository: Path, catalog: Catalog) -> None:
        repository = Path(repository)
        self.seqrec_dir = repository / "seqrec" / "1"
        self.novelty_dir = repository / "interest_generator" / "1"
        for f in (self.seqrec_dir / "model.onnx", self.seqrec_dir / "meta.json",
                  self.novelty_dir / "model.onnx", self.novelty_dir / "decoder.json"):
            if not f.is_file():
                raise FileNotFoundError(f"{f} is missing: export the models first "
                                        "(`explore seqrec export`, `explore novelty export`)")
        self.seqrec_meta = json.loads((self.seqrec_dir / "meta.json").read_text())
        if self.seqrec_meta.get("catalog_version") != catalog.version:
            raise CatalogError(f"seqrec was exported with catalog {self.seqrec_meta.get('catalog_version')}, "
                               f"the worker has catalog {catalog.version}")
        config = repository / "interest_generator" / "config.pbtxt"
        self.top_m = int(_pbtxt_param(config, "top_m", "5"))
        self.beam = int(_pbtxt_param(config, "beam", "8"))
        self.versions = {"catalog": catalog.version, "seqrec": _file_digest(self.seqrec_dir / "model.onnx"),
                         "interest_generator": _file_digest(self.novelty_dir / "model.onnx")}

    def local_models(self, threads: int) -> dict:
        """In-process twins of both Triton models: named inputs -> outputs, as Triton answers."""
        from streams.inference.novelty import OnnxNovelty
        from streams.inference.seqrec import OnnxSeqRec

        seqrec = OnnxSeqRec(self.seqrec_dir / "model.onnx", threads=threads)
        novelty = OnnxNovelty(self.novelty_dir, top_m=self.top_m, beam=self.beam, threads=threads)
        return {"seqrec": lambda x: list(seqrec.top_n(x["history"], x["allowed"])),
                "interest_generator": lambda x: list(novelty.propose(x["context"], x["exclude"]))}


class Engine:
    def __init__(self, cfg: EngineConfig, metrics: Metrics | None = None) -> None:
        if not cfg.catalog or not cfg.repository:
            raise ValueError("the engine needs a catalog (EXPLORE_CATALOG) and a model repository "
                             "(EXPLORE_REPOSITORY)")
        self.cfg = cfg
        self.metrics = metrics or Metrics()
        self.catalog = Catalog.load(Path(cfg.catalog))
        self.models = ModelFiles(Path(cfg.repository), self.catalog)
        level = int(self.models.seqrec_meta["level"])
        self.item_index = {item: i for i, item in enumerate(self.catalog.item_ids)}
        self.item_ids = self.catalog.item_ids
        self.item_cluster = self.catalog.item_clusters(level).astype(int).tolist()
        self.descriptions = self.catalog.descriptions(level)
        self.n_clusters = len(self.descriptions)
        self.max_len = int(self.models.seqrec_meta["max_len"])
        self.router = ModelRouter(cfg.triton_url, self.models.local_models(cfg.threads), cfg.triton_timeout_s,
                                  cfg.triton_retries, cfg.triton_retry_after_s, self.metrics.observe_call,
                                  lambda up: self.metrics.triton_up.set(1 if up else 0))
        self.table: dict[bytes, tuple[list[int], list[float]]] = {}

    # -- the novelty table -------------------------------------------------------------------
    def learn(self, key: bytes | None, value: bytes | None) -> None:
        """One record of the compacted novelty topic (a precomputed row or another worker's fill)."""
        if key is None:
            return
        if value is None:
            self.table.pop(key, None)
        else:
            try:
                doc = json.loads(value)
                self.table[key] = ([int(c) for c in doc["clusters"]], [float(s) for s in doc["scores"]])
            except (ValueError, KeyError, TypeError):
                return  # a foreign record on the topic: not ours to interpret
        self.metrics.table_size.set(len(self.table))

    # -- one batch ---------------------------------------------------------------------------
    async def handle(self, records: Sequence[RawRecord], load_state, now: float | None = None) -> BatchResult:  # type: ignore[no-untyped-def]
        """Validate, apply, and recommend for one micro-batch; `load_state(user)` reads the table."""
        cfg, m = self.cfg, self.metrics
        now = time.time() if now is None else now
        limits = Limits(cfg.max_payload_bytes, 1.0, now + cfg.max_future_s)
        out = BatchResult()
        triggers: dict[str, float] = {}  # user -> Kafka timestamp of the first event that changed its context
        for rec in records:
            parsed = parse_interaction(rec.key, rec.value, self.item_index, limits)
            if isinstance(parsed, Rejection):
                out.dlq.append((rec, parsed))
                continue
            user = parsed.user_id
            entry = out.states.get(user)
            state = entry[0] if entry else copy_state(load_state(user))
            if apply(state, parsed, self.item_cluster[parsed.item], rec.partition, rec.offset, cfg.k,
                     cfg.recent_items, cfg.dedupe_ids):
                out.applied += 1
                if needs_slate(state, cfg.k, cfg.slate_max_age_s):
                    triggers.setdefault(user, rec.timestamp)
            else:
                out.duplicates += 1
            out.states[user] = (state, rec)
        m.events.labels("applied").inc(out.applied)
        m.events.labels("duplicate").inc(out.duplicates)
        m.events.labels("invalid").inc(len(out.dlq))
        for _, rej in out.dlq:
            m.dlq.labels(rej.reason).inc()
        users = [u for u in triggers if needs_slate(out.states[u][0], cfg.k, cfg.slate_max_age_s)]
        if users:
            await self._recommend(users, out, triggers)
        return out

    async def _recommend(self, users: list[str], out: BatchResult, triggers: dict[str, float]) -> None:
        cfg, m = self.cfg, self.metrics
        states = {u: out.states[u][0] for u in users}
        novel: dict[str, list[tuple[int, float]]] = {}
        source: dict[str, str] = {}
        missing = sorted({context_key(states[u]["context"]) for u in users} - set(self.table))
        m.table_lookups.labels("miss").inc(len(missing))
        m.table_lookups.labels("hit").inc(len(users) - len(missing))
        if missing:  # fill the table for these contexts: the user-independent answer, published for all
            contexts = np.array([[int(c) for c in k.split(b",")] for k in missing], dtype=np.int64)
            (clusters, scores), _ = await self.router.infer(
                "interest_generator", {"context": contexts, "exclude": np.zeros((len(missing), self.n_clusters), bool)},
                ["clusters", "scores"])
            for key, cs, ss in zip(missing, clusters.tolist(), scores.tolist(), strict=True):
                ranked = [(c, s) for c, s in zip(cs, ss, strict=True) if c >= 0]
                self.table[key] = ([c for c, _ in ranked], [s for _, s in ranked])
                out.table_fills.append((key, json.dumps({"clusters": self.table[key][0], "scores": self.table[key][1],
                                                         "catalog_version": self.catalog.version,
                                                         "source": "live"}).encode()))
            m.table_size.set(len(self.table))
        live = []
        for u in users:
            ranked, scores = self.table[context_key(states[u]["context"])]
            novel[u] = novel_from_table(ranked, scores, states[u]["known"], cfg.m)
            source[u] = "table"
            if len(novel[u]) < cfg.m:
                live.append(u)
        if live:  # the table row has fewer than M clusters the user does not know: ask with their exclusions
            contexts = np.array([states[u]["context"] for u in live], dtype=np.int64)
            exclude = np.zeros((len(live), self.n_clusters), bool)
            for i, u in enumerate(live):
                exclude[i, states[u]["known"]] = True
            (clusters, scores), _ = await self.router.infer("interest_generator",
                                                            {"context": contexts, "exclude": exclude},
                                                            ["clusters", "scores"])
            for i, u in enumerate(live):
                answer = novel_from_table(clusters[i].tolist(), scores[i].tolist(), states[u]["known"], cfg.m)
                if len(answer) > len(novel[u]):
                    novel[u], source[u] = answer, "live"
        ready = [u for u in users if novel[u]]
        m.no_slate.labels("no_novel_cluster").inc(len(users) - len(ready))
        if not ready:
            return
        history = pad_histories([np.asarray(states[u]["items"], dtype=np.int64) + 1 for u in ready], self.max_len)
        allowed = np.zeros((len(ready), self.n_clusters), dtype=bool)
        for i, u in enumerate(ready):
            allowed[i, [c for c, _ in novel[u]]] = True
        (items, scores), seqrec_path = await self.router.infer("seqrec", {"history": history, "allowed": allowed},
                                                               ["items", "scores"])
        for i, u in enumerate(ready):
            slate = slate_items(items[i].tolist(), scores[i].tolist(), states[u]["items"], cfg.n, EXCLUDED / 2)
            if not slate:
                m.no_slate.labels("no_items").inc()
                continue
            out.recommendations.append(self._record(u, states[u], novel[u], slate, source[u], seqrec_path,
                                                    out.states[u][1], triggers[u]))

    def _record(self, user: str, state: dict, novel: list[tuple[int, float]], slate: list[tuple[int, float]],
                source: str, path: str, last: RawRecord, trigger_ts: float) -> tuple[bytes, bytes, float]:
        allowed = {c for c, _ in novel}
        items = [{"item_id": self.item_ids[i], "cluster": self.item_cluster[i], "score": round(s, 5)}
                 for i, s in slate]
        state["slate"] = {"context": list(state["context"]), "clusters": [c for c, _ in novel],
                          "items": [x["item_id"] for x in items], "ts": state["ts"]}
        self.metrics.slates.labels(source).inc()
        self.metrics.slate_items.inc(len(items))
        self.metrics.slate_novel_items.inc(sum(1 for x in items if x["cluster"] in allowed))
        value = {"user_id": user,
                 "context": [{"id": c, "description": self.descriptions[c]} for c in state["context"]],
                 "novel_clusters": [{"id": c, "description": self.descriptions[c], "score": round(s, 5)}
                                    for c, s in novel],
                 "slate": items, "source": source, "seqrec_path": path, "versions": self.models.versions,
                 "event_ts": state["ts"], "input": [last.partition, last.offset], "events_applied": state["n"]}
        return user.encode(), value, trigger_ts  # type: ignore[return-value]  # value is serialised at send time


def finish_record(value: dict, trigger_ts: float, now: float) -> bytes:
    """Stamp the event-to-slate latency at send time and serialise."""
    value["latency_ms"] = round((now - trigger_ts) * 1000, 2)
    value["sent_at"] = now
    return json.dumps(value).encode()


def user_view(state: dict | None, engine: Engine) -> dict:
    """What `GET /users/{id}` shows: the state in words (clusters with descriptions, item ids)."""
    if state is None:
        return {}
    d = engine.descriptions
    return {"events_applied": state["n"], "last_event_ts": state["ts"],
            "recent_items": [engine.item_ids[i] for i in state["items"][-20:]],
            "context": [{"id": c, "description": d[c]} for c in state["context"]],
            "known_clusters": [{"id": c, "description": d[c]} for c in state["known"]],
            "last_slate": state["slate"], "input_position": state["pos"]}


__all__ = ["BatchResult", "Engine", "RawRecord", "finish_record", "user_view"]
