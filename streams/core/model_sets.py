"""Model sets (issue 27, item 4): which complete set of models every worker serves, pure and without Kafka.

A model set is everything one slate depends on: a catalog, the exported `seqrec`, `interest_generator`
and (optional) `explorer` under one Triton version number, and the novelty table computed for them.
Set 1 is what a worker is configured with (settings `catalog`, `repository`'s version-1 models,
`novelty_topic`); `explore models publish` adds set 2, 3, ...: the catalog into the `catalogs`
directory, the models as version N of each Triton model, the table on its own compacted topic
(`table_topic`: a context key means other clusters under another catalog, so sets never share a
table), and last two records on the compacted control topic (setting `models_topic`):

- key `set/N`: the set's manifest (`SetManifest`), written once its files and table are complete;
- key `serving`: the set every worker must serve, and the sets served before it (`Serving.history`,
  newest last), so that `explore models rollback` returns to the one before, then the one before that;
- a tombstone on `set/N`: set N was pruned (`explore models prune`), its files are gone.

A worker follows the control topic whole. When `serving` names another set, it loads that set beside
the one it serves, reads its table topic to the end, and switches at its next batch boundary: every
slate comes from one set, never a mix. Users' states migrate lazily to the new catalog
(`streams.core.migration`), a rollback migrates them back the same way.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

SERVING_KEY = b"serving"
FIRST_SET = 1  # the set a worker is configured with (setting catalog, the repository's version 1)


def set_key(number: int) -> bytes:
    """The control-topic key of set `number`'s manifest."""
    return f"set/{number}".encode()


def table_topic(novelty_topic: str, number: int) -> str:
    """The compacted topic of set `number`'s novelty table: the configured one for set 1."""
    return novelty_topic if number == FIRST_SET else f"{novelty_topic}.set{number}"


@dataclass(frozen=True)
class SetManifest:
    """A published set: its number (= the Triton version of its models), catalog version and level, the digests
    of its model files (a worker refuses files that differ), its table topic and row count, when it was made."""

    number: int
    catalog: str
    level: int
    models: dict[str, str]
    table_topic: str
    table_rows: int
    ts: float

    def encode(self) -> bytes:
        return json.dumps({"set": self.number, "catalog": self.catalog, "level": self.level, "models": self.models,
                           "table_topic": self.table_topic, "table_rows": self.table_rows, "ts": self.ts}).encode()


@dataclass(frozen=True)
class Serving:
    """The set to serve, the sets served before it (oldest first), why and when it was chosen."""

    number: int
    history: tuple[int, ...] = ()
    reason: str = "publish"
    ts: float = 0.0

    def encode(self) -> bytes:
        return json.dumps({"set": self.number, "history": list(self.history), "reason": self.reason,
                           "ts": self.ts}).encode()

    def after_publish(self, number: int, ts: float) -> Serving:
        return Serving(number, (*self.history, self.number), "publish", ts)

    def after_rollback(self, ts: float) -> Serving:
        """The set served before this one; an error when there is none."""
        if not self.history:
            raise ValueError(f"set {self.number} is the first set served: there is nothing to roll back to")
        return Serving(self.history[-1], self.history[:-1], "rollback", ts)


def parse_manifest(value: bytes) -> SetManifest:
    doc = json.loads(value)
    return SetManifest(int(doc["set"]), str(doc["catalog"]), int(doc["level"]),
                       {str(k): str(v) for k, v in dict(doc["models"]).items()}, str(doc["table_topic"]),
                       int(doc["table_rows"]), float(doc.get("ts", 0.0)))


def parse_serving(value: bytes) -> Serving:
    doc = json.loads(value)
    return Serving(int(doc["set"]), tuple(int(n) for n in doc.get("history", ())), str(doc.get("reason", "")),
                   float(doc.get("ts", 0.0)))


@dataclass
class SetsView:
    """What the control topic has said so far: the manifests by number and the serving record (None: nothing
    published, serve set 1). Records that are not such are counted in `ignored` and left out."""

    manifests: dict[int, SetManifest] = field(default_factory=dict)
    serving: Serving | None = None
    ignored: Counter = field(default_factory=Counter)

    def learn(self, records: Iterable[tuple[bytes | None, bytes | None]]) -> None:
        for key, value in records:
            try:
                if key == SERVING_KEY and value is not None:
                    self.serving = parse_serving(value)
                elif key is not None and key.startswith(b"set/") and value is None:  # pruned
                    self.manifests.pop(int(key[4:]), None)
                elif key is not None and key.startswith(b"set/"):
                    manifest = parse_manifest(value)
                    if set_key(manifest.number) != key:
                        raise ValueError("key and manifest disagree")
                    self.manifests[manifest.number] = manifest
                else:
                    self.ignored["unknown_key"] += 1
            except (ValueError, KeyError, TypeError, RecursionError):
                self.ignored["invalid"] += 1

    def wanted(self) -> int:
        """The set every worker must serve now."""
        return self.serving.number if self.serving else FIRST_SET

    def next_number(self) -> int:
        """The number a new set gets: one more than any set published or served so far."""
        seen = [FIRST_SET, *self.manifests, *((self.serving.number, *self.serving.history) if self.serving else ())]
        return max(seen) + 1


def to_prune(view: SetsView, keep: int) -> tuple[list[int], tuple[int, ...]]:
    """(the published sets to remove, the serving record's history after it): every set but the served one, the
    last `keep` - 1 sets served before it (the rollback targets kept) and set 1 (the workers' configured set)."""
    if keep < 1:
        raise ValueError("--keep must be at least 1 (the served set)")
    serving = view.serving or Serving(FIRST_SET)
    history = serving.history[max(0, len(serving.history) - (keep - 1)):] if keep > 1 else ()
    kept = {FIRST_SET, serving.number, *history}
    return sorted(n for n in view.manifests if n not in kept), history


__all__ = ["FIRST_SET", "SERVING_KEY", "Serving", "SetManifest", "SetsView", "parse_manifest", "parse_serving",
           "set_key", "table_topic", "to_prune"]
