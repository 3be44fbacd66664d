"""What the worker does with a micro-batch of interactions, apart from Kafka itself.

`Engine` holds the catalog maps, the model router (Triton with the in-process fallback), the
novelty table and the metrics; `Engine.handle` turns a batch of raw records into state updates,
dead-letter records, novelty-table fills and recommendations. The Faust wiring (`streams.wiring.app`)
only feeds it batches and writes what it returns, so everything here runs in unit tests without
a broker (the models can be the in-process twins).

Per batch, whatever its size, the models see at most three calls: one `interest_generator` call
for the contexts missing from the table, one for users whose table clusters are all known to them,
and one `seqrec` call for every slate of the batch. That is what lets the worker keep up: the cost
per event is parsing and a dict update, the cost per model call is shared by the batch.

With the mixture of experts (setting `policy`; the repository's `explorer`), calls 2 and 3 are one:
the worker adds each user's context part of the mixture (from the table row: the LM expert; from
the context: co-occurrence and popularity) and `explorer` adds the sequence expert, drops the known
clusters, takes the top M and returns their slate. Its slates have source "mixture" and carry the
mixture's digest among their versions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from interests.clusters.catalog import Catalog, CatalogError
from interests.novelty.mixture import ContextExperts, Mixture, served_context_scores
from interests.runtime.constrained import EXCLUDED
from streams.config import EngineConfig
from streams.core.feedback import FeedbackRecord, drop_unused_versions, feedback_record, open_slate, remember, resolve
from streams.core.items import item_fit, read_item
from streams.core.metrics import Metrics
from streams.core.migration import cluster_mapping, migrate, upgrade_legacy
from streams.core.model_files import ModelFiles
from streams.core.model_sets import FIRST_SET, SetManifest, table_topic
from streams.core.recommendation import Recommendation, novel_for_user, slate_items
from streams.core.records import Limits, Rejection, parse_interaction
from streams.core.state import apply, copy_state, needs_slate
from streams.core.table import CompactTable, context_key, parse_rows, ranked_row, row_value
from streams.inference.router import ModelRouter
from streams.inference.seqrec import EXPLORER_OUTPUTS, pad_histories


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
    retry: list[RawRecord] = field(default_factory=list)  # events on items not published yet: the retry topic
    table_fills: list[tuple[bytes, bytes]] = field(default_factory=list)  # novelty topic key, value
    recommendations: list[Recommendation] = field(default_factory=list)
    feedback: list[FeedbackRecord] = field(default_factory=list)  # proposals resolved by this batch
    states: dict[str, tuple[dict, RawRecord]] = field(default_factory=dict)  # user -> state, its last record
    applied: int = 0
    duplicates: int = 0


log = logging.getLogger(__name__)


@dataclass
class ServingSet:
    """One complete model set as a worker serves it (`streams.core.model_sets`): its catalog at the models'
    level, the exported models and their in-process twins, the mixture, and its own novelty table."""

    number: int
    catalog: Catalog
    models: ModelFiles
    table_topic: str
    mixture: tuple[Mixture, ContextExperts] | None
    local: dict
    level: int = field(init=False)  # the models' catalog level (seqrec's)
    table: CompactTable = field(init=False)

    def __post_init__(self) -> None:
        self.level = int(self.models.seqrec_meta["level"])
        self.item_ids = self.catalog.item_ids
        self.item_index = {item: i for i, item in enumerate(self.item_ids)}  # the models' rows
        self.item_cluster = self.catalog.item_clusters(self.level).astype(int).tolist()
        self.descriptions = self.catalog.descriptions(self.level)
        self.n_clusters = len(self.descriptions)
        self.max_len = int(self.models.seqrec_meta["max_len"])
        self.table = CompactTable(self.n_clusters)  # arrays, not Python rows: ~1M contexts fit (issue 15)


class Engine:
    def __init__(self, cfg: EngineConfig, metrics: Metrics | None = None) -> None:
        if not cfg.catalog or not cfg.repository:
            raise ValueError("the engine needs a catalog (EXPLORE_CATALOG) and a model repository "
                             "(EXPLORE_REPOSITORY)")
        self.cfg = cfg
        self.metrics = metrics or Metrics()
        self._catalogs: dict[str, Catalog] = {}  # earlier catalogs by version, once loaded
        self._mappings: dict[str, tuple[list[int | None], list[str]] | None] = {}  # old catalog version -> map
        # Every valid items-topic placement (issue 27): item -> (catalog version, level, cluster); the serving
        # set uses those placed under its catalog (`adopt`).
        self.item_places: dict[str, tuple[str, int, int]] = {}
        self._places: dict[tuple[str, int, int], tuple[str, int, int]] = {}  # each distinct placement once
        self.router = ModelRouter(cfg.triton_url, {}, cfg.triton_timeout_s, cfg.triton_retries,
                                  cfg.triton_retry_after_s, self.metrics.observe_call,
                                  lambda up: self.metrics.triton_up.set(1 if up else 0), tls=cfg.triton_tls())
        self.adopt(self.load_set(FIRST_SET))

    # -- the model set it serves (issue 27) ---------------------------------------------------------
    def load_set(self, number: int, manifest: SetManifest | None = None) -> ServingSet:
        """Model set `number` read from disk, beside the one served (slow: catalog, ONNX sessions; a worker runs
        it off its event loop). Set 1 is the configured one; another must match its manifest (the control
        topic's): its catalog in the `catalogs` directory, the digests of its Triton version-`number` files."""
        cfg = self.cfg
        if number == FIRST_SET:
            catalog = Catalog.load(Path(cfg.catalog))
        else:
            if manifest is None:
                raise CatalogError(f"model set {number} has no manifest on the control topic")
            found = self.find_catalog(manifest.catalog)
            if found is None:
                raise CatalogError(f"model set {number}: its catalog {manifest.catalog} is not in the catalogs "
                                   f"directory ({cfg.catalogs or 'setting catalogs not set'})")
            catalog = found
        models = ModelFiles(Path(cfg.repository), catalog, cfg.k, number)
        differ = {k: v for k, v in (manifest.models if manifest else {}).items() if models.versions.get(k) != v}
        if differ or (manifest and int(models.seqrec_meta["level"]) != manifest.level):
            raise CatalogError(f"model set {number}: the files under version {number} of {cfg.repository} are not the "
                               f"published ones ({', '.join(sorted(differ)) or 'level'} differ)")
        return ServingSet(number, catalog, models, table_topic(cfg.novelty_topic, number), self._mixture(cfg, models),
                          models.local_models(cfg.threads))

    def adopt(self, s: ServingSet) -> None:
        """Serve set `s` from the next batch on (the caller calls it between batches, never inside `handle`):
        every slate is then made by `s` alone; users' states move to its catalog at their next event."""
        self.serving = s
        self.catalog, self.models, self.level = s.catalog, s.models, s.level
        self.mixture, self.table = s.mixture, s.table
        self.item_index, self.item_ids, self.item_cluster = s.item_index, s.item_ids, s.item_cluster
        self.descriptions, self.n_clusters, self.max_len = s.descriptions, s.n_clusters, s.max_len
        # Every item the worker can apply an event on, with its cluster: the catalog's, and (issue 27) those
        # published on the items topic under this catalog.
        self.cluster_of: dict[str, int] = dict(zip(self.item_ids, self.item_cluster, strict=True))
        self.published: set[str] = set()  # items of the items topic, not in the catalog (cluster_of has them)
        for item, (version, level, cluster) in self.item_places.items():
            if item not in self.item_index and not item_fit(version, level, cluster, s.catalog.version, s.level,
                                                             s.n_clusters):
                self.published.add(item)
                self.cluster_of[item] = cluster
        self._mappings = {}  # the maps from earlier catalogs point into the one served
        self.router.serve(s.local, s.models.max_batch, s.number)
        self.metrics.serving_set.set(s.number)
        self.metrics.items_published.set(len(self.published))
        self.metrics.table_size.set(len(s.table))

    def find_catalog(self, version: str) -> Catalog | None:
        """The catalog of `version`: the configured one, `catalogs/<version>` (where `explore models publish`
        puts it) or any other sub-directory of `catalogs` (any name); None when none is."""
        if version in self._catalogs:
            return self._catalogs[version]
        cfg = self.cfg
        root = Path(cfg.catalogs) if cfg.catalogs else None
        candidates = [Path(cfg.catalog), *([root / version] if root else []),
                      *(sorted(root.glob("*/")) if root and root.is_dir() else [])]
        for directory in candidates:
            try:
                catalog = Catalog.load(directory)
            except (CatalogError, OSError):
                continue
            self._catalogs[catalog.version] = catalog
            if catalog.version == version:
                return catalog
        return None

    def _mixture(self, cfg: EngineConfig, models: ModelFiles) -> tuple[Mixture, ContextExperts] | None:
        """The mixture of experts the worker serves (setting `policy`), or None for the LM's table and seqrec."""
        meta = models.explorer_meta
        if cfg.policy == "lm" or (cfg.policy == "auto" and meta is None):
            return None
        if meta is None:
            raise FileNotFoundError(f"policy mixture: {models.explorer_dir} is missing; export a fitted mixture "
                                    "(`explore novelty export-mixture`) or set policy to lm")
        if int(meta["m"]) != cfg.m:
            raise ValueError(f"explorer proposes M = {meta['m']} clusters, the worker's setting m is {cfg.m}: export "
                             f"the mixture with --m {cfg.m}, or set m to {meta['m']}")
        return Mixture(meta["weights"], int(meta["level"])), ContextExperts.load(models.explorer_dir)

    # -- the novelty table -------------------------------------------------------------------
    def learn(self, key: bytes | None, value: bytes | None) -> None:
        """One record of the compacted novelty topic (a precomputed row or another worker's fill): `learn_many`."""
        self.learn_many([(key, value)])

    def learn_many(self, records: Sequence[tuple[bytes | None, bytes | None]], into: ServingSet | None = None) -> None:
        """Records of a set's novelty topic (`into`: the one served) in offset order (the follower's fetch): rows
        join the table, a tombstone takes its context out; a row of another catalog or none ("stale",
        "invalid": `parse_row`) is counted and left out."""
        target = into or self.serving
        rows = iter(parse_rows([(k, v) for k, v in records if k is not None and v is not None],
                               target.catalog.version, self.cfg.k, target.n_clusters))
        for key, value in records:
            if key is None:
                continue
            if value is None:
                target.table.pop(key, None)
                continue
            row = next(rows)
            if isinstance(row, str):
                self.metrics.table_rows_ignored.labels(row).inc()
            else:
                target.table[key] = row
        if target is self.serving:
            self.metrics.table_size.set(len(target.table))

    def learn_items(self, records: Sequence[tuple[bytes | None, bytes | None]]) -> None:
        """Records of the items topic in offset order: a published item joins `cluster_of` (events on it
        apply from now on), a tombstone withdraws it; records this worker cannot use are counted by reason.
        Every valid placement is kept for the model sets the worker may serve next."""
        for key, value in records:
            if key is None:
                continue
            item_id = key.decode("utf-8", "replace")
            if value is None:
                self.item_places.pop(item_id, None)
                if item_id in self.published:
                    self.published.discard(item_id)
                    del self.cluster_of[item_id]
                continue
            item = read_item(key, value)
            if isinstance(item, str):
                self.metrics.item_records_ignored.labels(item).inc()
                continue
            place = (item.catalog, item.level, item.cluster)
            self.item_places[item.item_id] = self._places.setdefault(place, place)  # shared: ~1 tuple a cluster
            why = "in_catalog" if item.item_id in self.item_index else item_fit(
                item.catalog, item.level, item.cluster, self.catalog.version, self.level, self.n_clusters)
            if why:
                self.metrics.item_records_ignored.labels(why).inc()
                continue
            self.published.add(item.item_id)
            self.cluster_of[item.item_id] = item.cluster
        self.metrics.items_published.set(len(self.published))

    def _count_feedback(self, records: Sequence[FeedbackRecord]) -> None:
        """`explore_feedback_total{source,rank,outcome}`: acceptance by source and rank is its ratio."""
        for r in records:
            self.metrics.feedback.labels(r.source, str(r.rank), r.outcome).inc()

    # -- one batch ---------------------------------------------------------------------------
    async def handle(self, records: Sequence[RawRecord], load_state: Callable[[str], dict | None],
                     now: float | None = None) -> BatchResult:
        """Validate, apply, and recommend for one micro-batch; `load_state(user)` reads the table."""
        cfg, m = self.cfg, self.metrics
        now = time.time() if now is None else now
        limits = Limits(cfg.max_payload_bytes, 1.0, now + cfg.max_future_s, cfg.max_id_length, cfg.max_key_bytes)
        out = BatchResult()
        triggers: dict[str, float] = {}  # user -> Kafka timestamp of the first event that changed its context
        for rec in records:
            try:
                self._apply_record(rec, load_state, limits, now, out, triggers)
            except Exception as exc:  # one record's failure is that record's: the rest of the batch goes on
                log.exception(f"record {rec.partition}/{rec.offset} failed; it goes to the DLQ")
                text = f"{type(exc).__name__}: {str(exc)[:300]}".encode("utf-8", "backslashreplace").decode()
                out.dlq.append((rec, Rejection("internal_error", text)))
        m.events.labels("applied").inc(out.applied)
        m.events.labels("duplicate").inc(out.duplicates)
        m.events.labels("invalid").inc(len(out.dlq))
        m.events.labels("waiting").inc(len(out.retry))
        for _, rej in out.dlq:
            m.dlq.labels(rej.reason).inc()
        users = [u for u in triggers if needs_slate(out.states[u][0], cfg.k, cfg.slate_max_age_s)]
        if users:
            try:
                await self._recommend(users, out, triggers)
            except Exception:  # the batch's states stand; these users get a slate with their next event
                log.exception(f"no slates for {len(users)} users of this batch")
                m.no_slate.labels("error").inc(len(users))
        self._count_feedback(out.feedback)
        return out

    def _apply_record(self, rec: RawRecord, load_state: Callable[[str], dict | None], limits: Limits, now: float,
                      out: BatchResult, triggers: dict[str, float]) -> None:
        """Validate one record and apply it to a copy of its user's state, which replaces the batch's
        copy only once every step succeeded (a failure half-way leaves the user as it was)."""
        cfg = self.cfg
        parsed = parse_interaction(rec.key, rec.value, self.cluster_of, limits)
        if isinstance(parsed, Rejection):
            if parsed.reason == "unknown_item" and cfg.unknown_item_wait_s > 0:
                out.retry.append(rec)  # its item may be published soon (`streams.core.items`)
            else:
                out.dlq.append((rec, parsed))
            return
        user = parsed.user_id
        entry = out.states.get(user)
        state = copy_state(entry[0] if entry else load_state(user))
        fed: list[FeedbackRecord] = self._to_this_catalog(user, state)
        cluster = parsed.cluster
        applied = apply(state, parsed, rec.partition, rec.offset, cfg.k, cfg.recent_items, cfg.dedupe_ids)
        if applied:
            state["seen"] = now
            fed += [feedback_record(user, r, self.descriptions, state["vs"])
                    for r in resolve(state["proposals"], state["n"], parsed.ts, cluster, parsed.item_id,
                                    parsed.weight, cfg.feedback_horizon())]
            if fed:
                drop_unused_versions(state["proposals"], state["vs"])
        due = applied and needs_slate(state, cfg.k, cfg.slate_max_age_s)
        out.states[user] = (state, rec)
        out.feedback += fed
        out.applied += applied
        out.duplicates += not applied
        if due:
            triggers.setdefault(user, rec.timestamp)

    # -- a new catalog (issue 27) -------------------------------------------------------------
    def _to_this_catalog(self, user: str, state: dict) -> list[FeedbackRecord]:
        """Bring a state written under another catalog to this worker's (`streams.core.migration`), in place;
        the feedback records of the proposals that closes. A state of this catalog costs one comparison."""
        version = self.catalog.version
        if state.get("cv") == version:
            return []
        if state.get("cv") is None:  # new, or written before states recorded their catalog
            if upgrade_legacy(state, self.item_ids, version):
                self.metrics.migrations.labels("legacy").inc()
            return []
        was = state["cv"]
        old = self._old_catalog(was)
        closed = migrate(state, self.cluster_of, old[0] if old else None, version, self.cfg.k)
        self.metrics.migrations.labels("mapped" if old else "history_only").inc()
        if old:
            descriptions = old[1]
        else:  # the old catalog is gone: its clusters are named by their ids
            top = max((c for r in closed for c in (*r.slate["ctx"], r.cluster)), default=0)
            descriptions = [f"cluster {c} of catalog {was}" for c in range(top + 1)]
        return [feedback_record(user, r, descriptions, state["vs"]) for r in closed]

    def _old_catalog(self, version: str) -> tuple[list[int | None], list[str]] | None:
        """(old cluster -> new cluster, the old clusters' descriptions) for a catalog version (`find_catalog`:
        the configured catalog or one of the `catalogs` directory); None when it is not there. Once per version."""
        if version not in self._mappings:
            self._mappings[version] = None
            old = self.find_catalog(version)
            if old is not None and self.level < len(old.levels):
                clusters = old.item_clusters(self.level)
                self._mappings[version] = (cluster_mapping(old.item_ids, clusters, self.cluster_of,
                                                           len(old.clusters[self.level])),
                                           old.descriptions(self.level))
            if self._mappings[version] is None:
                log.warning(f"catalog {version} is not among the earlier catalogs ({self.cfg.catalogs or 'none set'}):"
                            " its users keep only their history's clusters")
        return self._mappings[version]

    def history(self, state: dict, newest: int = 0) -> np.ndarray:
        """The user's items the models know (0-based rows of the serving catalog), oldest first: an item
        published after the models were built is in the state but not in their tables. `newest` > 0: only
        that many of the newest (what SASRec reads), without turning the older ids into rows."""
        get, rows = self.item_index.get, []
        for item in reversed(state["items"]):
            j = get(item)
            if j is not None:
                rows.append(j)
                if len(rows) == newest:
                    break
        return np.array(rows[::-1], dtype=np.int64)

    async def _recommend(self, users: list[str], out: BatchResult, triggers: dict[str, float]) -> None:
        """Slates for `users`, in the three model calls at most that a batch makes (two with the mixture:
        the table fill and `explorer`, which names the novel clusters and makes their slates)."""
        states = {u: out.states[u][0] for u in users}
        # Once per user: item ids -> model rows; the mixture's item experts read the whole history, SASRec
        # its newest max_len (the slate's exclusion of seen items is checked by id below).
        seen = {u: self.history(states[u], 0 if self.mixture is not None else self.max_len) for u in users}
        out.table_fills += await self._fill_table(users, states)
        if self.mixture is not None:
            novel, (items, scores), seqrec_path = await self._mixture_slates(users, states, seen)
            source, versions = dict.fromkeys(users, "mixture"), dict.fromkeys(users, self.models.versions)
        else:
            novel, source, versions = await self._novel_clusters(users, states)
        ready = [u for u in users if novel[u]]
        self.metrics.no_slate.labels("no_novel_cluster").inc(len(users) - len(ready))
        if not ready:
            return
        if self.mixture is None:
            (items, scores), seqrec_path = await self._top_items(ready, seen, novel)
        else:  # the graph answered for every user: keep the rows of those with a novel cluster
            pos = {u: i for i, u in enumerate(users)}
            rows = [pos[u] for u in ready]
            items, scores = items[rows], scores[rows]
        for i, u in enumerate(ready):
            had, ids = set(states[u]["items"]), self.item_ids
            candidates = items[i].tolist()
            had_rows = [c - 1 for c in candidates if c > 0 and ids[c - 1] in had]
            slate = slate_items(candidates, scores[i].tolist(), had_rows, self.cfg.n, EXCLUDED / 2)
            if not slate:
                self.metrics.no_slate.labels("no_items").inc()
                continue
            out.recommendations.append(self._recommendation(u, states[u], novel[u], slate, source[u], seqrec_path,
                                                            out.states[u][1], triggers[u], versions[u]))
            state = states[u]
            evicted = remember(state["proposals"], open_slate(state["n"], state["ts"], state["context"],
                                                              [c for c, _ in novel[u]], source[u], versions[u],
                                                              state["vs"]),
                               self.cfg.feedback_max_open)
            out.feedback += [feedback_record(u, r, self.descriptions, state["vs"]) for r in evicted]
            if evicted:
                drop_unused_versions(state["proposals"], state["vs"])

    async def _fill_table(self, users: list[str], states: dict[str, dict]) -> list[tuple[bytes, bytes]]:
        """Model call 1: `interest_generator` for the contexts missing from the table, without exclusions
        (the user-independent answer); the answers join the table and are returned to be published."""
        keys = {u: context_key(states[u]["context"]) for u in users}
        missing = sorted({k for k in keys.values() if k not in self.table})  # not set(self.table): O(table)
        misses = sum(1 for u in users if keys[u] not in self.table)  # one lookup per user, as hits
        self.metrics.table_lookups.labels("miss").inc(misses)
        self.metrics.table_lookups.labels("hit").inc(len(users) - misses)
        if not missing:
            return []
        contexts = np.array([[int(c) for c in k.split(b",")] for k in missing], dtype=np.int64)
        (clusters, scores), _ = await self.router.infer(
            "interest_generator", {"context": contexts, "exclude": np.zeros((len(missing), self.n_clusters), bool)},
            ["clusters", "scores"])
        fills = []
        for key, cs, ss in zip(missing, clusters.tolist(), scores.tolist(), strict=True):
            self.table[key] = (*ranked_row(cs, ss), {})
            fills.append((key, row_value(*self.table[key][:2], self.catalog.version, source="live")))
        self.metrics.table_size.set(len(self.table))
        return fills

    async def _novel_clusters(self, users: list[str], states: dict[str, dict]
                              ) -> tuple[dict[str, list[tuple[int, float]]], dict[str, str], dict[str, dict[str, str]]]:
        """Each user's novel clusters, where they came from and the versions of what chose them: the table
        row minus what the user knows, with the row's versions (`row_versions`); model call 2,
        `interest_generator` with the user's own exclusions, for users left with fewer than M by a row
        that does not rank every cluster (a longer live answer replaces the row's, and the worker's
        versions alone then name what chose it)."""
        m = self.cfg.m
        novel: dict[str, list[tuple[int, float]]] = {}
        source: dict[str, str] = {}
        versions: dict[str, dict[str, str]] = {}
        exhaustive: set[str] = set()
        for u in users:
            ranked, scores, row_versions = self.table[context_key(states[u]["context"])]
            novel[u], source[u] = novel_for_user(ranked, scores, states[u]["known"], m), "table"
            versions[u] = self.row_versions(row_versions)
            if len(ranked) >= self.n_clusters - len(states[u]["context"]):
                exhaustive.add(u)
        # A row that ranks every cluster its context leaves (`table_depth`) already holds every novel
        # cluster the user has: a live call could not find more, and at 8 clusters such users (who know
        # most of them) made one extra model call in many batches (~38 ms each at 1,000 events/s).
        live = [u for u in users if len(novel[u]) < m and u not in exhaustive]
        if not live:
            return novel, source, versions
        contexts = np.array([states[u]["context"] for u in live], dtype=np.int64)
        exclude = np.zeros((len(live), self.n_clusters), bool)
        for i, u in enumerate(live):
            exclude[i, states[u]["known"]] = True
        (clusters, scores), _ = await self.router.infer("interest_generator", {"context": contexts, "exclude": exclude},
                                                        ["clusters", "scores"])
        for i, u in enumerate(live):
            answer = novel_for_user(clusters[i].tolist(), scores[i].tolist(), states[u]["known"], m)
            if len(answer) > len(novel[u]):
                novel[u], source[u], versions[u] = answer, "live", self.models.versions
        return novel, source, versions

    async def _mixture_slates(self, users: list[str], states: dict[str, dict], seen: dict[str, np.ndarray]
                              ) -> tuple[dict[str, list[tuple[int, float]]], tuple[np.ndarray, np.ndarray], str]:
        """The mixture's one model call for every slate of the batch (`explorer`): the context part from each
        user's table row and context (`served_context_scores`), the known clusters and the history in; each
        user's novel clusters with their mixture scores, and the slate inside them, out."""
        mixture, experts = self.mixture  # type: ignore[misc]
        contexts = np.array([states[u]["context"] for u in users], dtype=np.int64)
        rows = [self.table[context_key(states[u]["context"])][:2] for u in users]
        known = np.zeros((len(users), self.n_clusters), dtype=bool)
        for i, u in enumerate(users):
            known[i, states[u]["known"]] = True
        histories = [seen[u] for u in users]
        history = pad_histories([h + 1 for h in histories], self.max_len)
        (clusters, cluster_scores, items, scores), path = await self.router.infer(
            "explorer", {"history": history, "known": known,
                         "context_scores": served_context_scores(mixture, experts, contexts, rows, histories)},
            EXPLORER_OUTPUTS)
        novel = {u: [(int(c), float(v)) for c, v in zip(clusters[i], cluster_scores[i], strict=True) if c >= 0]
                 for i, u in enumerate(users)}
        return novel, (items, scores), path

    def row_versions(self, row: dict[str, str]) -> dict[str, str]:
        """The versions a slate from a table row carries: the worker's models and what the row adds (the
        alignment model that ordered it); the worker's own names win, a row cannot relabel its models."""
        mine = self.models.versions
        return {**mine, **{k: v for k, v in row.items() if k not in mine}} if row else mine

    async def _top_items(self, users: list[str], seen: dict[str, np.ndarray],
                         novel: dict[str, list[tuple[int, float]]]) -> tuple[list[np.ndarray], str]:
        """Model call 3: `seqrec` for every slate of the batch, restricted to each user's novel clusters, from
        their histories as model rows (`history`); ((items, scores), the path that answered)."""
        history = pad_histories([seen[u] + 1 for u in users], self.max_len)
        allowed = np.zeros((len(users), self.n_clusters), dtype=bool)
        for i, u in enumerate(users):
            allowed[i, [c for c, _ in novel[u]]] = True
        return await self.router.infer("seqrec", {"history": history, "allowed": allowed}, ["items", "scores"])

    def _recommendation(self, user: str, state: dict, novel: list[tuple[int, float]], slate: list[tuple[int, float]],
                        source: str, path: str, last: RawRecord, trigger_ts: float,
                        versions: dict[str, str]) -> Recommendation:
        """The slate as sent; the state remembers it (its context decides when the next one is due)."""
        allowed = {c for c, _ in novel}
        items = [{"item_id": self.item_ids[i], "cluster": self.item_cluster[i], "score": round(s, 5)}
                 for i, s in slate]
        state["slate"] = {"context": list(state["context"]), "clusters": [c for c, _ in novel],
                          "items": [x["item_id"] for x in items], "ts": state["ts"]}
        self.metrics.slates.labels(source).inc()
        self.metrics.set_slates.labels(str(self.serving.number)).inc()
        self.metrics.slate_items.inc(len(items))
        self.metrics.slate_novel_items.inc(sum(1 for x in items if x["cluster"] in allowed))
        return Recommendation(
            user_id=user, context=[{"id": c, "description": self.descriptions[c]} for c in state["context"]],
            novel_clusters=[{"id": c, "description": self.descriptions[c], "score": round(s, 5)} for c, s in novel],
            slate=items, source=source, seqrec_path=path, versions=versions, event_ts=state["ts"],
            input=(last.partition, last.offset), events_applied=state["n"], trigger_ts=trigger_ts)


def user_view(state: dict | None, engine: Engine) -> dict:
    """What `GET /users/{id}` shows: the state in words (clusters with descriptions, item ids)."""
    if state is None:
        return {}
    same = state.get("cv") in (None, engine.catalog.version)  # else: migrated at the user's next event
    d = engine.descriptions if same else [None] * (1 + max([*state["known"], *state["context"], 0]))
    return {"events_applied": state["n"], "last_event_ts": state["ts"],
            "recent_items": [engine.item_ids[i] if isinstance(i, int) else i for i in state["items"][-20:]],
            "catalog_version": state.get("cv"),  # None: written before states recorded it (dense indices)
            "context": [{"id": c, "description": d[c]} for c in state["context"]],
            "known_clusters": [{"id": c, "description": d[c]} for c in state["known"]],
            "last_slate": state["slate"], "input_position": state["pos"],
            "open_proposals": [{"slate": p["n"], "clusters": [c for c, _ in p["open"]]}
                               for p in state.get("proposals", [])]}


__all__ = ["BatchResult", "Engine", "RawRecord", "ServingSet", "user_view"]
