"""Model sets on Kafka and Triton (issue 27, item 4): `explore models publish` and `rollback`, and a worker's side.

The control topic's records and rules are `streams.core.model_sets`'s (pure); `Engine.load_set` and
`Engine.adopt` load and serve a set. `SetSwitcher` is the wiring between them: it loads the set the
control topic names beside the one served (off the event loop: a catalog and ONNX sessions take a
second or more), reads that set's table topic to its end, and hands it to the agent, which adopts
it between two batches. Until then the served set goes on serving whole batches; a set that cannot
be loaded is logged, counted (`explore_set_failures_total`) and tried again, and the served set stays.

`publish_set` writes a set in the order that makes "complete" true before any worker can see it: the
catalog (into `catalogs/<version>`), the models as Triton version N (the configs' version policy
`all`, so the versions served before stay loaded for a rollback), Triton told to load them (explicit
model control) and each version checked ready, the table on its own topic, the items published under
another catalog placed again under this one, then the manifest, and last the `serving` record.
`rollback` writes only a `serving` record (and places the items again), so it takes effect as fast as
the workers can adopt a set they may still hold ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import shutil
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from streams.config import EngineConfig
from streams.core.engine import Engine, ServingSet
from streams.core.items import PublishedItem, place_items, read_item
from streams.core.metrics import Metrics
from streams.core.model_files import ModelFiles
from streams.core.model_sets import (
    FIRST_SET,
    SERVING_KEY,
    Serving,
    SetManifest,
    SetsView,
    set_key,
    table_topic,
    to_prune,
)
from streams.wiring.items_topic import publish_items
from streams.wiring.table_topic import publish_compacted, publish_table
from streams.wiring.topic_reader import TopicMissing, read_topic_records

MODELS = ("seqrec", "interest_generator", "explorer")  # what a set holds (explorer: when exported)

RETRY_FAILED_S = 10.0  # how long a set that failed to load waits before it is tried again


class SetSwitcher:
    """Keeps a worker on the model set the control topic names (`view`, fed by its follower)."""

    def __init__(self, engine: Engine, metrics: Metrics,
                 follow_table: Callable[[ServingSet, asyncio.Event], asyncio.Task], log: logging.Logger,
                 in_batch: Callable[[], bool] = lambda: True,
                 items_read: Callable[[], Awaitable[None]] | None = None) -> None:
        self.engine, self.metrics, self.follow_table, self.log = engine, metrics, follow_table, log
        self.in_batch = in_batch  # the agent is inside a batch (between taking it and acking it): no switch now
        # Returns once the items follower has read what the items topic holds now: a publish places the items
        # again under the new catalog before it names the set, so a switch after it finds them placed.
        self.items_read = items_read
        self.view = SetsView()
        self.tables: dict[int, tuple[asyncio.Task, asyncio.Event]] = {}  # set -> its table follower, loaded
        self.ready: ServingSet | None = None  # loaded, its table read: adopted at the next batch boundary
        self.failed: dict[int, float] = {}  # set -> when it failed to load

    def start(self) -> None:
        """Follow the served set's table (set 1's, at the worker's start)."""
        s = self.engine.serving
        self.tables[s.number] = (self.follow_table(s, loaded := asyncio.Event()), loaded)

    def table_loaded(self) -> bool:
        entry = self.tables.get(self.engine.serving.number)
        return entry is not None and entry[1].is_set()

    def settled(self) -> bool:
        """The wanted set is served and its table read to the end (a worker is ready only then)."""
        return self.view.wanted() == self.engine.serving.number and self.table_loaded()

    async def prepare(self) -> None:
        """Load the wanted set if it is neither served nor ready, and wait until its table is read."""
        want = self.view.wanted()
        if want == self.engine.serving.number or (self.ready is not None and self.ready.number == want):
            return
        if time.monotonic() - self.failed.get(want, -RETRY_FAILED_S) < RETRY_FAILED_S:
            return
        manifest = self.view.manifests.get(want)
        try:
            s = await asyncio.get_running_loop().run_in_executor(None, self.engine.load_set, want, manifest)
        except Exception as exc:  # a missing catalog or file, other digests: the served set goes on
            self.failed[want] = time.monotonic()
            self.metrics.set_failures.inc()
            self.log.error(f"model set {want} cannot be served ({type(exc).__name__}: {exc}); serving set "
                           f"{self.engine.serving.number} still, trying again in {RETRY_FAILED_S:.0f} s")
            return
        self.tables[want] = (self.follow_table(s, loaded := asyncio.Event()), loaded)
        while not loaded.is_set():  # a table that never loads must not keep the worker from a later publish
            if self.view.wanted() != want:
                self._stop_table(want)
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(loaded.wait(), 0.5)
        if self.items_read is not None:
            await self.items_read()
        if self.view.wanted() == want:
            self.ready = s
            if not self.in_batch():  # an idle worker switches now; a busy one at its next batch boundary
                self.switch()
        else:  # another publish or rollback came meanwhile
            self._stop_table(want)

    def switch(self, at_start: bool = False) -> bool:
        """Adopt the ready set if it is still the wanted one; only between two batches (the agent calls it, and
        before its first batch with `at_start`)."""
        s = self.ready
        if s is None or s.number != self.view.wanted():
            return False
        old = self.engine.serving.number
        self.engine.adopt(s)
        self.ready = None
        self._stop_table(old)
        reason = "start" if at_start or self.view.serving is None else self.view.serving.reason
        self.metrics.set_switches.labels(reason).inc()
        self.log.info(f"serving model set {s.number} (catalog {s.catalog.version}) instead of set {old} ({reason})")
        return True

    def _stop_table(self, number: int) -> None:
        entry = self.tables.pop(number, None)
        if entry is not None:
            entry[0].cancel()


def read_sets(cfg: EngineConfig) -> SetsView:
    """The control topic as a worker sees it (empty when nothing was published yet)."""
    view = SetsView()
    with contextlib.suppress(TopicMissing):
        view.learn(read_topic_records(cfg.bootstrap, cfg.models_topic, cfg.kafka_security()))
    return view


def _write_control(cfg: EngineConfig, records: Iterable[tuple[bytes, bytes | None]]) -> None:
    publish_compacted(cfg.bootstrap, cfg.models_topic, records, "the model sets", cfg.kafka_security(),
                      cfg.replication_factor, cfg.min_insync_replicas)


def _versioned_config(text: str) -> str:
    """A config.pbtxt that keeps every version of the model loaded (`version_policy: { all { } }`), so that
    the set served before a publish stays servable until a rollback."""
    text = re.sub(r"(?ms)^version_policy\s*:?\s*\{.*?\}\s*\}\s*$\n?", "", text)
    return text.rstrip("\n") + "\nversion_policy: { all { } }\n"


def _copy_models(staged: Path, repository: Path, number: int) -> list[str]:
    """The staged export's version-1 files of each model as version `number` of the serving repository, and
    its config with the `all` version policy; the models copied."""
    copied = []
    for model in MODELS:
        source = staged / model / "1"
        if not source.is_dir():
            continue
        target = repository / model / str(number)
        if target.exists():
            shutil.rmtree(target)  # left by a publish that failed before its manifest: never served
        shutil.copytree(source, target)
        config = staged / model / "config.pbtxt"
        if config.is_file():
            (repository / model / "config.pbtxt").write_text(_versioned_config(config.read_text()))
        copied.append(model)
    if "seqrec" not in copied or "interest_generator" not in copied:
        raise FileNotFoundError(f"{staged} lacks seqrec/1 or interest_generator/1: export the models there first")
    return copied


def _load_in_triton(url: str, models: list[str], number: int, timeout_s: float = 120.0) -> None:
    """Ask Triton (explicit model control) to load the repository's models again, and wait until version
    `number` of each is ready; a clear error when Triton refuses (another control mode) or fails."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url=url)
    try:
        for model in models:
            try:
                client.load_model(model)
            except Exception as exc:  # tritonclient raises its own error type
                raise RuntimeError(f"Triton at {url} did not load {model} version {number} ({exc}); it must run "
                                   "with --model-control-mode=explicit (docs/design/lifecycle.md)") from exc
        deadline = time.monotonic() + timeout_s
        while not all(client.is_model_ready(m, str(number)) for m in models):
            if time.monotonic() > deadline:
                raise TimeoutError(f"Triton at {url}: version {number} of {models} not ready in {timeout_s:.0f} s")
            time.sleep(0.2)
    finally:
        client.close()


def published_items(cfg: EngineConfig) -> list[PublishedItem]:
    """The items topic's items as it holds them now: each item's latest valid record (withdrawn ones left out)."""
    try:
        records = read_topic_records(cfg.bootstrap, cfg.items_topic, cfg.kafka_security())
    except TopicMissing:
        return []
    latest: dict[bytes, PublishedItem] = {}
    for key, value in records:
        if key is None:
            continue
        item = read_item(key, value) if value is not None else None
        if item is None or isinstance(item, str):
            latest.pop(key, None)
            continue
        latest[key] = item
    return list(latest.values())


def place_items_again(cfg: EngineConfig, catalog_dir: Path, level: int) -> int:
    """Place every item of the items topic that was placed under another catalog (or level) again under the
    catalog of `catalog_dir`, from the text its record carries, and publish it; the count. Items of that
    catalog itself are left alone (its own cluster stands)."""
    from interests.clusters.catalog import Catalog
    from interests.clusters.placement import load_placement

    catalog = Catalog.load(catalog_dir)
    known = set(catalog.item_ids)
    todo = [i for i in published_items(cfg)
            if (i.catalog, i.level) != (catalog.version, level) and i.item_id not in known]
    if not todo:
        return 0
    placer = load_placement(catalog_dir, catalog)
    if placer is None:
        raise FileNotFoundError(f"{catalog_dir} has no placement.npz: {len(todo)} published item(s) cannot be placed "
                                "in its clusters (`explore clusters build` writes it; `explore items publish --data` "
                                "fits it for an older catalog)")
    placed = place_items([(i.item_id, i.title, i.text) for i in todo], placer, catalog.version, level, time.time())
    return publish_items(cfg.bootstrap, cfg.items_topic, placed, cfg.kafka_security(), cfg.replication_factor,
                         cfg.min_insync_replicas)


@dataclass(frozen=True)
class Published:
    """What `publish_set` or `rollback` did."""

    manifest: SetManifest | None
    serving: Serving
    items_placed: int


def publish_set(cfg: EngineConfig, catalog_dir: Path, staged: Path, rows: list[dict] | None = None,
                triton_url: str = "", progress: Callable[[str], None] = print) -> Published:
    """Publish a complete model set (`staged`: a repository the models were exported into, version 1) and make
    it the one every worker serves. Needs the settings `repository` (the Triton repository the workers and
    Triton share), `catalogs` (where the catalog goes) and a broker; `rows`: its novelty table (none: the
    workers fill it with live answers)."""
    from interests.clusters.catalog import Catalog

    if not cfg.repository or not cfg.catalogs:
        raise ValueError("publishing a model set needs the settings repository (the Triton repository the workers "
                         "serve) and catalogs (where each set's catalog is kept)")
    repository, catalogs = Path(cfg.repository), Path(cfg.catalogs)
    view = read_sets(cfg)
    # past every set named on the topic and every version directory (one left by a publish that failed early)
    number = max([view.next_number(), *(int(d.name) + 1 for d in (repository / "seqrec").glob("*/")
                                        if d.name.isdigit())])
    catalog = Catalog.load(catalog_dir)
    home = catalogs / catalog.version
    if not home.is_dir():
        shutil.copytree(catalog_dir, home)
    progress(f"set {number}: catalog {catalog.version} in {home}")
    models = _copy_models(Path(staged), repository, number)
    files = ModelFiles(repository, catalog, cfg.k, number)  # the same checks a worker makes
    level = int(files.seqrec_meta["level"])
    progress(f"set {number}: {', '.join(models)} as version {number} of {repository}")
    if triton_url:
        _load_in_triton(triton_url, models, number)
        progress(f"set {number}: loaded and ready in Triton at {triton_url}")
    topic = table_topic(cfg.novelty_topic, number)
    for row in rows or []:
        row["catalog_version"] = catalog.version
    sent = publish_table(cfg.bootstrap, topic, rows or [], cfg.kafka_security(), cfg.replication_factor,
                         cfg.min_insync_replicas)
    progress(f"set {number}: {sent} table rows on {topic}")
    placed = place_items_again(cfg, home, level)
    if placed:
        progress(f"set {number}: {placed} published item(s) placed again under catalog {catalog.version}")
    now = time.time()
    manifest = SetManifest(number, catalog.version, level, {k: v for k, v in files.versions.items() if k != "set"},
                           topic, sent, now)
    serving = (view.serving or Serving(FIRST_SET)).after_publish(number, now)
    _write_control(cfg, [(set_key(number), manifest.encode()), (SERVING_KEY, serving.encode())])
    return Published(manifest, serving, placed)


def rollback(cfg: EngineConfig) -> Published:
    """Serve the set served before the current one again (its items placed again under its catalog)."""
    view = read_sets(cfg)
    if view.serving is None:
        raise ValueError(f"nothing was published on {cfg.models_topic}: the workers serve set {FIRST_SET}, there is "
                         "nothing to roll back to")
    serving = view.serving.after_rollback(time.time())
    target = view.manifests.get(serving.number)
    placed = 0
    if target is not None and cfg.catalogs and (Path(cfg.catalogs) / target.catalog).is_dir():
        placed = place_items_again(cfg, Path(cfg.catalogs) / target.catalog, target.level)
    elif serving.number == FIRST_SET and cfg.catalog:
        meta = json.loads((Path(cfg.repository) / "seqrec" / "1" / "meta.json").read_text())
        placed = place_items_again(cfg, Path(cfg.catalog), int(meta["level"]))
    _write_control(cfg, [(SERVING_KEY, serving.encode())])
    return Published(target, serving, placed)


def prune(cfg: EngineConfig, keep: int, triton_url: str = "") -> list[int]:
    """Remove the published sets that are neither served nor among the last `keep` - 1 sets served before it
    (the rollback targets kept): their Triton versions (Triton asked to load the models again, so it unloads
    them), manifests (tombstones) and catalogs no kept set uses; the `serving` record's history is cut to
    what is kept. Set 1, the workers' configured set, is never removed. The sets removed."""
    view = read_sets(cfg)
    gone, kept_history = to_prune(view, keep)
    if not gone:
        return []
    serving = view.serving or Serving(FIRST_SET)
    kept = {FIRST_SET, serving.number, *kept_history}
    repository = Path(cfg.repository)
    for n in gone:
        for model in MODELS:
            shutil.rmtree(repository / model / str(n), ignore_errors=True)
    if triton_url:
        _load_in_triton(triton_url, [m for m in MODELS if (repository / m / str(serving.number)).is_dir()],
                        serving.number)
    in_use = {view.manifests[n].catalog for n in kept if n in view.manifests}
    for n in gone:
        catalog = view.manifests[n].catalog
        if cfg.catalogs and catalog not in in_use:
            shutil.rmtree(Path(cfg.catalogs) / catalog, ignore_errors=True)
    records: list[tuple[bytes, bytes | None]] = [(set_key(n), None) for n in gone]
    if view.serving is not None and kept_history != serving.history:
        records.append((SERVING_KEY, Serving(serving.number, kept_history, serving.reason, serving.ts).encode()))
    _write_control(cfg, records)
    return gone


__all__ = ["Published", "SetSwitcher", "place_items_again", "prune", "publish_set", "published_items", "read_sets",
           "rollback"]
