"""The precomputed novelty table: rows keyed by the context tuple, as a compacted Kafka topic holds them.

Key: the context's cluster ids joined by commas ("12,7", most recent last). Value (`row_value`): the
ranked novel clusters and their scores, the catalog version, the writer (`source`: "precompute",
"live") and, optionally, `versions`: what chose the row's order beyond the worker's own models
(`{"alignment": digest, "best_of": "n"}` for a row re-ranked by `interests.alignment.best_of_n`), carried
into the slates and feedback records it makes. Compaction keeps the latest answer per context, so
every worker can read the topic as a global table, and a republished row replaces the old one in
running workers.

The value is binary (`ROW_MAGIC`, then lengths, the texts, int32 clusters, float64 scores): at
1,000 clusters the table is ~1M rows of 64, and a starting worker reads all of it before it is
ready; as JSON a row was 1.7 kB and `json.loads` alone took ~35 s of the start (issue 15). Rows
in JSON (`{"clusters": [...], "scores": [...], "catalog_version": ...}`) are still read, so a
topic written before, or a row written by hand, keeps working. `decode_row` shows either as a dict.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable, Iterator, MutableMapping, Sequence

import numpy as np

Row = tuple[list[int], list[float], dict[str, str]]  # (ranked clusters, their scores, versions): parse_row


def context_key(context: Sequence[int]) -> bytes:
    """The table's key for a context (cluster ids, most recent last): the engine's lookups and fills
    and the published precomputed rows must spell it the same."""
    return ",".join(str(int(c)) for c in context).encode()


def parse_context_key(key: bytes | None, k: int, n_clusters: int) -> list[int] | None:
    """The context a table key names, or None when it is not K distinct cluster ids of the catalog
    spelt as `context_key` spells them: rows and precompute requests (`streams.precompute.jobs`) are
    keyed alike, and a key that parses here can never index past the catalog's clusters."""
    try:
        context = [int(c) for c in (key or b"").split(b",")]
    except ValueError:
        return None
    if len(context) != k or len(set(context)) != k or any(not 0 <= c < n_clusters for c in context) \
            or context_key(context) != key:
        return None
    return context


MAX_VERSIONS = 8  # entries of a row's `versions`
MAX_VERSION_CHARS = 64  # characters of each name and value (a digest is 12-16)


ROW_MAGIC = b"\x00nt1"  # the first bytes of a binary row; a JSON row starts with "{"
_HEAD = struct.Struct("<4sHBBH")  # magic, ranked clusters, bytes of: catalog version, source, versions JSON


def row_value(clusters: Sequence[int], scores: Sequence[float], catalog_version: str | None,
              source: str | None = None, versions: dict[str, str] | None = None) -> bytes:
    """A row's record value as published (precomputed, or a worker's live fill with `source`; `versions`
    when something beyond the worker's models chose its order): `parse_row` reads it back, exactly."""
    ids, values = np.asarray(clusters, np.int64).reshape(-1), np.asarray(scores, np.float64).reshape(-1)
    if len(ids) != len(values):
        raise ValueError(f"a row needs a score per cluster: {len(ids)} clusters, {len(values)} scores")
    if len(ids) and (ids.min() < np.iinfo(np.int32).min or ids.max() > np.iinfo(np.int32).max):
        raise ValueError("cluster ids of a row must fit in 32 bits")
    texts = [(catalog_version or "").encode(), (source or "").encode(),
             json.dumps(dict(versions)).encode() if versions else b""]
    if len(ids) > 0xFFFF or len(texts[0]) > 0xFF or len(texts[1]) > 0xFF or len(texts[2]) > 0xFFFF:
        raise ValueError("a row's clusters, catalog version, source or versions are too long to publish")
    return b"".join([_HEAD.pack(ROW_MAGIC, len(ids), *map(len, texts)), *texts,
                     ids.astype("<i4").tobytes(), values.astype("<f8").tobytes()])


def decode_row(value: bytes) -> dict | None:
    """A published row as a dict (clusters, scores, catalog_version, source, versions), binary or JSON,
    unchecked (None when it is neither): for tools and tests that look at the topic; the worker reads
    rows with `parse_row`, which checks them against its catalog."""
    if value[:len(ROW_MAGIC)] != ROW_MAGIC:
        try:
            doc = json.loads(value)
        except (ValueError, RecursionError):
            return None
        return doc if isinstance(doc, dict) else None
    try:
        _, n, *lengths = _HEAD.unpack_from(value)
        texts, body = [], _HEAD.size
        for length in lengths:
            texts.append(value[body:body + length])
            body += length
        return {"clusters": np.frombuffer(value, "<i4", n, body).tolist(),
                "scores": np.frombuffer(value, "<f8", n, body + 4 * n).tolist(),
                "catalog_version": texts[0].decode(), "source": texts[1].decode() or None,
                "versions": json.loads(texts[2]) if texts[2] else {}}
    except (struct.error, ValueError, RecursionError):
        return None


def latest_rows(records: Iterable[tuple[bytes | None, bytes | None]]) -> tuple[list[dict], int]:
    """The table a topic's records (in offset order) leave after compaction, as rows in the form
    `explore novelty precompute --out` writes (`{"context", "clusters", "scores", "catalog_version",
    "source", "versions"}`), and how many records were neither a row nor a tombstone. Unchecked against a
    catalog: what is on the topic, for people and for `explore novelty rerank --table`."""
    table: dict[bytes, dict] = {}
    unreadable = 0
    for key, value in records:
        try:
            context = [int(c) for c in (key or b"").split(b",")]
        except ValueError:  # no key, or not cluster ids
            unreadable += 1
            continue
        row = None if value is None else decode_row(value)
        if value is not None and row is None:
            unreadable += 1
            continue
        table.pop(key, None)  # a tombstone removes the row; a rewritten row moves to the end, as compaction
        if row is not None:
            table[key] = {"context": context, **row}
    return list(table.values()), unreadable


def ranked_row(clusters: Sequence[int], scores: Sequence[float]) -> tuple[list[int], list[float]]:
    """One answer of `interest_generator` as a table row: its slots in order, without the empty ones
    (cluster -1: no allowed cluster left): how the engine's live fills and the precompute workers
    (`streams.precompute.worker`) both turn an answer into a row."""
    kept = [(int(c), float(s)) for c, s in zip(clusters, scores, strict=True) if c >= 0]
    return [c for c, _ in kept], [s for _, s in kept]


def _versions(doc: dict) -> dict[str, str] | None:
    """A row's `versions` ({} when it has none), or None when it is not a small dict of short strings:
    each distinct one is kept by every worker and copied into slates, so its size is bounded here."""
    versions = doc.get("versions", {})
    if not isinstance(versions, dict) or len(versions) > MAX_VERSIONS:
        return None
    for name, value in versions.items():
        if not isinstance(value, str) or len(name) > MAX_VERSION_CHARS or len(value) > MAX_VERSION_CHARS:
            return None
    return versions


def parse_row(key: bytes, value: bytes, catalog_version: str, k: int, n_clusters: int) -> Row | str:
    """(clusters, scores, versions) of a novelty-topic record, or why it is not used: "stale" (written for
    another catalog version, or without one) or "invalid" (a key that is not K distinct cluster ids, cluster
    ids out of range or repeated, more of them than the catalog has, scores that do not match or are not
    finite, `versions` that is not a small dict of short strings, a value that is neither format).

    Anyone who can write the topic can add rows; only rows of this catalog are kept, so the table
    stays bounded (at most one row per context of K clusters) and a foreign row can never index
    past the catalog's clusters.
    """
    row = parse_row_arrays(key, value, catalog_version, k, n_clusters)
    return row if isinstance(row, str) else (row[0].tolist(), row[1].tolist(), row[2])


def parse_row_arrays(key: bytes, value: bytes, catalog_version: str, k: int,
                     n_clusters: int) -> tuple[np.ndarray, np.ndarray, dict[str, str]] | str:
    """`parse_row` with the clusters and scores as numpy arrays: `parse_rows` of one record."""
    return parse_rows([(key, value)], catalog_version, k, n_clusters)[0]


ArrayRow = tuple[np.ndarray, np.ndarray, dict[str, str]]  # (clusters, scores, versions): parse_rows


def parse_rows(records: Sequence[tuple[bytes | None, bytes]], catalog_version: str, k: int,
               n_clusters: int) -> list[ArrayRow | str]:
    """`parse_row` of each (key, value), with clusters and scores as numpy arrays: what the worker's
    follower stores in its `CompactTable`, a fetch at a time. Binary rows of one layout are checked
    together, a few numpy calls for all of them: a starting worker parses ~1M rows, and one row at a
    time took 24.1 s of CPU for them against 15.2 s a fetch at a time (`benchmarks/scale.py --skip-topn`)."""
    out: list[ArrayRow | str] = ["invalid"] * len(records)
    layouts: dict[tuple[int, int, int], list[int]] = {}  # (clusters, body offset, versions bytes) -> records
    expected = catalog_version.encode()
    for i, (key, value) in enumerate(records):
        if parse_context_key(key, k, n_clusters) is None:
            continue
        if value[:len(ROW_MAGIC)] != ROW_MAGIC:
            row = _parse_json(value, catalog_version, n_clusters)
            out[i] = row if isinstance(row, str) else \
                (np.asarray(row[0], np.int64), np.asarray(row[1], np.float64), row[2])
            continue
        if len(value) < _HEAD.size:
            continue
        _, n, n_version, n_source, n_versions = _HEAD.unpack_from(value)
        body = _HEAD.size + n_version + n_source + n_versions
        if len(value) != body + 12 * n or n > n_clusters:
            continue
        if value[_HEAD.size:_HEAD.size + n_version] != expected:
            out[i] = "stale"
            continue
        layouts.setdefault((n, body, n_versions), []).append(i)
    for (n, body, n_versions), rows in layouts.items():
        _check_binary([records[i][1] for i in rows], n, body, n_versions, n_clusters, rows, out)
    return out


def _check_binary(values: list[bytes], n: int, body: int, n_versions: int, n_clusters: int, where: list[int],
                  out: list) -> None:
    """Binary rows of one layout (n clusters from byte `body`) as `parse_row` checks them, into `out[where]`:
    every row's clusters in range and distinct, its scores finite, its `versions` a small dict of short
    strings (each distinct one parsed once)."""
    table = np.frombuffer(b"".join(values), np.uint8).reshape(len(values), body + 12 * n)
    clusters = table[:, body:body + 4 * n].copy().view("<i4")
    scores = table[:, body + 4 * n:].copy().view("<f8")
    ok = np.ones(len(values), bool)
    if n:
        ok &= (clusters.min(axis=1) >= 0) & (clusters.max(axis=1) < n_clusters) & np.isfinite(scores).all(axis=1)
        ranked = np.sort(clusters, axis=1)
        ok &= ~(ranked[:, 1:] == ranked[:, :-1]).any(axis=1)
    parsed: dict[bytes, dict[str, str] | None] = {b"": {}}
    for j, i in enumerate(where):
        text = values[j][body - n_versions:body]
        if text not in parsed:
            try:
                parsed[text] = _versions({"versions": json.loads(text)})
            except (ValueError, RecursionError):
                parsed[text] = None
        versions = parsed[text]
        out[i] = (clusters[j], scores[j], versions) if ok[j] and versions is not None else "invalid"


def _parse_json(value: bytes, catalog_version: str, n_clusters: int) -> Row | str:
    """A JSON row (written before the binary format, or by hand), checked as `parse_row` says."""
    if len(value) > 256 + 64 * n_clusters + 16 * MAX_VERSIONS * MAX_VERSION_CHARS:  # a full row, full versions
        return "invalid"
    try:
        doc = json.loads(value)
    except (ValueError, RecursionError):
        return "invalid"
    if not isinstance(doc, dict):
        return "invalid"
    if doc.get("catalog_version") != catalog_version:
        return "stale"
    clusters, scores, versions = doc.get("clusters"), doc.get("scores"), _versions(doc)
    if not isinstance(clusters, list) or not isinstance(scores, list) or len(clusters) != len(scores) \
            or versions is None:
        return "invalid"
    # Types before `set` and `isfinite`: a list as a cluster id (unhashable) or a 400-digit score (OverflowError)
    # raised here, crashed the follower, and its restart met the same row again, for good.
    if len(clusters) > n_clusters or not set(map(type, clusters)) <= {int}:
        return "invalid"
    if (clusters and (min(clusters) < 0 or max(clusters) >= n_clusters)) or len(set(clusters)) != len(clusters):
        return "invalid"
    try:  # an int too large for a float makes `math.isfinite` raise
        if not set(map(type, scores)) <= {int, float} or not all(map(math.isfinite, scores)):
            return "invalid"
    except OverflowError:
        return "invalid"
    return clusters, list(map(float, scores)), versions


class CompactTable(MutableMapping[bytes, Row]):
    """The novelty table as a worker holds it: every row in numpy arrays, keyed by context.

    Why: 1,000 clusters give ~1M contexts of 64 ranked clusters each. As Python rows (lists of int
    and float objects) that is ~2.7 kB a row, ~2.7 GB in every worker (`benchmarks/scale.py`); here
    a row is 64 x (2-byte cluster + 8-byte score), the scores kept exactly as published, plus the
    key's dict entry. A row's `versions` is a 4-byte index into the few distinct versions the rows
    carry (one per republished table, not one dict per row). It reads and writes (clusters, scores,
    versions) as a dict would, so the engine is unchanged; rows are stored in slots that grow by
    doubling and are reused after a delete.
    """

    def __init__(self, n_clusters: int, capacity: int = 1024) -> None:
        self.dtype = np.int16 if n_clusters <= np.iinfo(np.int16).max else np.int32
        self.slots: dict[bytes, int] = {}
        self.free: list[int] = []
        self.used = 0
        self.clusters = np.zeros((capacity, 0), self.dtype)
        self.scores = np.zeros((capacity, 0), np.float64)
        self.length = np.zeros(capacity, np.int32)
        self.version = np.full(capacity, -1, np.int32)  # index into `versions`; -1: a free slot
        self.versions: list[dict[str, str]] = []
        self.version_index: dict[tuple[tuple[str, str], ...], int] = {}

    def __getitem__(self, key: bytes) -> Row:
        slot = self.slots[key]
        n = int(self.length[slot])
        return self.clusters[slot, :n].tolist(), self.scores[slot, :n].tolist(), dict(self.versions[self.version[slot]])

    def __setitem__(self, key: bytes, row: Row) -> None:
        clusters, scores, versions = row
        slot = self.slots.get(key)
        if slot is None:
            slot = self.free.pop() if self.free else self.used
            self.used = max(self.used, slot + 1)
            self.fit(slot + 1, len(clusters))
            self.slots[key] = slot
        else:
            self.fit(slot + 1, len(clusters))
        self.clusters[slot, :len(clusters)] = clusters
        self.scores[slot, :len(scores)] = scores
        self.length[slot] = len(clusters)
        self.version[slot] = self.intern(versions)

    def __delitem__(self, key: bytes) -> None:
        slot = self.slots.pop(key)
        self.version[slot] = -1
        self.free.append(slot)

    def __contains__(self, key: object) -> bool:
        return key in self.slots

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.slots)

    def __len__(self) -> int:
        return len(self.slots)

    def clear(self) -> None:
        self.slots.clear()
        self.free.clear()
        self.used = 0
        self.version[:] = -1
        self.versions.clear()
        self.version_index.clear()

    def intern(self, versions: dict[str, str]) -> int:
        """The index of `versions` among the distinct ones; versions no row uses any more are dropped
        when they outnumber the rows (a writer that sends a new dict per record cannot grow the list)."""
        name = tuple(sorted(versions.items()))
        found = self.version_index.get(name)
        if found is not None:
            return found
        if len(self.versions) >= max(64, 2 * len(self.slots)):
            self._drop_unused_versions()
        self.version_index[name] = len(self.versions)
        self.versions.append(dict(versions))
        return len(self.versions) - 1

    def _drop_unused_versions(self) -> None:
        """Renumber the versions rows still use (O(slots) in numpy; at most once per doubling)."""
        used = self.version[:self.used]
        live = np.unique(used[used >= 0])
        remap = np.full(len(self.versions), -1, np.int32)
        remap[live] = np.arange(len(live), dtype=np.int32)
        self.version[:self.used] = np.where(used >= 0, remap[np.maximum(used, 0)], -1)
        self.versions = [self.versions[i] for i in live.tolist()]
        self.version_index = {tuple(sorted(v.items())): i for i, v in enumerate(self.versions)}

    def version_counts(self, top: int = 8) -> list[dict]:
        """The rows per distinct `versions`, most rows first (`top` of them): whether a republished table
        has reached this worker."""
        counts = np.bincount(self.version[:self.used][self.version[:self.used] >= 0], minlength=len(self.versions))
        order = np.argsort(-counts, kind="stable")[:top]
        return [{"versions": dict(self.versions[i]), "rows": int(counts[i])} for i in order.tolist() if counts[i]]

    def fit(self, rows: int, depth: int) -> None:
        """Grow the arrays to hold `rows` rows of `depth` clusters: doubling, so n rows cost O(n) copies."""
        capacity, width = self.clusters.shape
        if rows <= capacity and depth <= width:
            return
        capacity, width = max(rows, 2 * capacity if rows > capacity else capacity), max(depth, width)
        for name in ("clusters", "scores"):
            old = getattr(self, name)
            new = np.zeros((capacity, width), old.dtype)
            new[:old.shape[0], :old.shape[1]] = old
            setattr(self, name, new)
        grow = capacity - len(self.length)
        self.length = np.concatenate([self.length, np.zeros(grow, np.int32)])
        self.version = np.concatenate([self.version, np.full(grow, -1, np.int32)])

    def nbytes(self) -> int:
        """Bytes of the arrays (the key index is a dict on top: ~100-150 bytes a context)."""
        return self.clusters.nbytes + self.scores.nbytes + self.length.nbytes + self.version.nbytes


