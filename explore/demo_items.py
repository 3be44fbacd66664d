"""The demo's new items (issue 27): a few items held out of training arrive while the engine runs.

`explore demo --new-items N` (default 8) picks items of the held-out period (`newest_items`: first met
there when the data has such items, else the most interacted with there), removes them from the
training period, so no catalog, SASRec or LM of set 1 knows them, and, when the held-out replay starts:

1. publishes them on the items topic, each placed in a cluster from its text (what `explore items
   publish` does): from then on every event on them is applied to its user's state, none goes to the DLQ;
2. folds them into the next model set (what `explore items fold --publish` does: the catalog grown by
   them, the SASRec with them as cold items, the LM and the explorer exported again) and publishes it;
   the worker switches to it at a batch boundary, and the held-out replay starts once it has (so that
   the run shows them in slates whatever the machine's speed; the summary says how long it took);
3. watches for the first slate that names one of them, and counts events, DLQ records and slates.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from interests.data.datasets import Dataset


@dataclass
class NewItems:
    """The held-out items and what became of them in the run."""

    ids: list[str]
    titles: list[str]
    texts: list[str]
    events: int  # held-out interactions on them
    published_at: float = 0.0  # wall clock, when they were on the items topic
    folded_at: float = 0.0  # when the set holding them was staged
    served_at: float = 0.0  # when the worker served it
    set_number: int = 0
    grown_catalog: Path | None = None
    grown_repository: Path | None = None
    grown_checkpoint: Path | None = None
    error: str = ""

    @classmethod
    def of(cls, ds: Dataset, items: np.ndarray, start_ts: float) -> NewItems:
        titles = ds.item_text.get("title")
        held = ds.timestamps >= start_ts
        return cls([str(ds.item_ids[i]) for i in items], [titles[i] if titles else str(ds.item_ids[i]) for i in items],
                   [ds.text_of(int(i)) for i in items], int(np.isin(ds.items[held], items).sum()))

    def publish(self, cfg, catalog_dir: Path, level: int) -> list:  # type: ignore[no-untyped-def]
        """Place them under the served catalog from their text and publish them on the items topic."""
        from interests.clusters.catalog import Catalog
        from interests.clusters.placement import load_placement
        from streams.core.items import place_items
        from streams.wiring.items_topic import publish_items

        catalog = Catalog.load(catalog_dir)
        placer = load_placement(catalog_dir, catalog)
        assert placer is not None, "the demo saves the catalog's placement with it"
        items = place_items(list(zip(self.ids, self.titles, self.texts, strict=True)), placer, catalog.version, level,
                            time.time())
        publish_items(cfg.bootstrap, cfg.items_topic, items, cfg.kafka_security(), cfg.replication_factor,
                      cfg.min_insync_replicas)
        self.published_at = time.time()
        return items

    def fold(self, cfg, run: Path, placed: list, rows: list[dict], serving: Callable[[], float]) -> None:  # type: ignore[no-untyped-def]
        """Stage and publish the next model set with them, and wait until the worker serves it (`serving`: the
        worker's `explore_serving_set`); a failure is kept in `error` (the run goes on with set 1)."""
        from exporters.grow_set import NewItem, grow_set
        from streams.infra.process import wait_until
        from streams.wiring.model_sets import publish_set

        try:
            repo = Path(cfg.repository)
            mixture = run / "mixture" if (repo / "explorer" / "1").is_dir() else None
            grown = grow_set(run / "catalog", [NewItem(i.item_id, i.title, i.text, i.cluster) for i in placed],
                             run / "seqrec" / "model.pt", repo / "interest_generator" / "1", run / "set-2", mixture)
            self.folded_at = time.time()
            done = publish_set(cfg, grown.catalog_dir, grown.repository, [dict(r) for r in rows], cfg.triton_url,
                               progress=lambda line: None)
            self.set_number = done.serving.number
            wait_until(lambda: serving() == self.set_number, 120, f"the worker serves model set {self.set_number}",
                       interval_s=0.1)
            self.served_at = time.time()
            self.grown_catalog, self.grown_repository, self.grown_checkpoint = \
                grown.catalog_dir, grown.repository, grown.checkpoint
        except Exception as exc:  # said in the summary; the replay and the report go on with set 1
            self.error = f"{type(exc).__name__}: {exc}"

    def in_dlq(self, cfg) -> int:  # type: ignore[no-untyped-def]
        """DLQ records whose event names one of them (there must be none: they were published first)."""
        from streams.wiring.topic_reader import TopicMissing, read_topic_records

        ids, n = set(self.ids), 0
        try:
            records = read_topic_records(cfg.bootstrap, cfg.dlq_topic, cfg.kafka_security())
        except TopicMissing:
            return 0
        for _, value in records:
            try:
                n += str(json.loads(value or b"").get("item_id")) in ids
            except (ValueError, AttributeError):
                continue
        return n

    def slates(self, records: list[dict]) -> list[dict]:
        """The slates that name one of them, in the order they were sent."""
        ids = set(self.ids)
        return sorted((r for r in records if any(str(x["item_id"]) in ids for x in r["slate"])),
                      key=lambda r: r["sent_at"])

    def summary(self, records: list[dict], dlq: int) -> str:
        """Lines for the demo's summary."""
        if self.error:
            return (f"  new items: {len(self.ids)} held out of training, {self.events:,} held-out events on them, "
                    f"{dlq} in the DLQ; their model set was NOT published: {self.error}")
        shown = self.slates(records)
        first = (f"the first {shown[0]['sent_at'] - self.published_at:.1f} s after they were published "
                 f"(user {shown[0]['user_id']}: " + ", ".join(
                     f"'{self.titles[self.ids.index(str(x['item_id']))]}'" for x in shown[0]["slate"]
                     if str(x["item_id"]) in self.ids) + ")") if shown else "none yet"
        return (f"  new items: {len(self.ids)} held out of training, published at the held-out start; "
                f"{self.events:,} events on them, {dlq} in the DLQ; set {self.set_number} (catalog + them) served "
                f"{self.served_at - self.published_at:.1f} s after (folded in {self.folded_at - self.published_at:.1f} "
                f"s); {len(shown):,} slates named one, {first}")


__all__ = ["NewItems"]
