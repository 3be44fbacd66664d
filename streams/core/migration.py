"""A user's state under a new catalog: the lazy migration of issue 27. Pure: no Kafka, no models.

A state's cluster fields (`known`, `context`, the last `slate`, the open `proposals`) are cluster ids
of the catalog whose version the state records in `cv`; its history (`items`) is external item ids,
which mean the same under every catalog. When a worker serves another catalog, each user is
migrated at their next event (lazily: a million idle users cost nothing until they come back):

- `context`: the last K distinct clusters of the history, each item's cluster read in the new
  catalog (items the new catalog does not have are skipped); a history with fewer than K distinct
  clusters is completed with the old context mapped by `cluster_mapping`, newest first;
- `known`: the clusters of the history in the new catalog, plus the old `known` mapped by
  `cluster_mapping` (`known` is "never forgotten" and reaches further back than the bounded history);
- `slate`: dropped (its clusters belong to the old catalog), so the next full context gets a slate;
- `proposals`: closed with outcome "catalog" (not a label: their clusters changed meaning), returned
  so the worker writes their feedback records; `vs` keeps only the versions still named.

The mapping rule (`cluster_mapping`), documented once here: an old cluster maps to the new cluster
that holds most of its items (items shared by both catalogs; a tie goes to the lowest new id); an
old cluster none of whose items are in the new catalog maps to nothing and is dropped from `known`.
Without the old catalog (`mapping` None) only the history counts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from streams.core.feedback import Resolved, drop_unused_versions

Mapping_ = list[int | None]  # old cluster id -> new cluster id, or None


def cluster_mapping(old_ids: Sequence[str], old_clusters: Sequence[int], new_cluster_of: Mapping[str, int],
                    n_old: int) -> Mapping_:
    """Old cluster -> the new cluster holding most of its shared items (module docstring)."""
    pairs = [(int(c), new_cluster_of[i]) for i, c in zip(old_ids, old_clusters, strict=True) if i in new_cluster_of]
    out: Mapping_ = [None] * n_old
    if not pairs:
        return out
    old, new = np.array(pairs, dtype=np.int64).T
    counts = np.zeros((n_old, int(new.max()) + 1), dtype=np.int64)
    np.add.at(counts, (old, new), 1)
    for c in range(n_old):
        if counts[c].any():
            out[c] = int(np.argmax(counts[c]))  # argmax: the first maximum, the lowest id on a tie
    return out


def recent_clusters(items: Sequence[str], cluster_of: Mapping[str, int], k: int) -> list[int]:
    """The last `k` distinct clusters of a history (most recent last), items unknown to `cluster_of` skipped."""
    out: list[int] = []
    for item in reversed(items):
        c = cluster_of.get(item)
        if c is not None and c not in out:
            out.append(c)
            if len(out) == k:
                break
    return out[::-1]


def migrate(state: dict, cluster_of: Mapping[str, int], mapping: Mapping_ | None, version: str,
            k: int) -> list[Resolved]:
    """Move `state` (in place) to the catalog `version` whose item clusters `cluster_of` gives; the
    proposals it closes (outcome "catalog"), for their feedback records."""
    mapped = (lambda cs: [m for c in cs if 0 <= c < len(mapping) and (m := mapping[c]) is not None]) if mapping \
        else (lambda cs: [])
    context = recent_clusters(state["items"], cluster_of, k)
    for c in reversed(mapped(state["context"])):
        if len(context) >= k:
            break
        if c not in context:
            context.insert(0, c)
    history = {cluster_of[i] for i in state["items"] if i in cluster_of}
    state["known"] = sorted(history | set(mapped(state["known"])))
    state["context"] = context
    state["slate"] = None
    closed = [Resolved(s, c, r, "catalog", state["n"] - s["n"], None, None, None)
              for s in state.get("proposals", []) for c, r in s["open"]]
    state["proposals"] = []
    drop_unused_versions(state["proposals"], state.setdefault("vs", {}))
    state["cv"] = version
    return closed


def upgrade_legacy(state: dict, item_ids: Sequence[str], version: str) -> bool:
    """A state written before states recorded their catalog (items as dense indices, no `cv`): read
    under the catalog the worker serves, as it was before, and rewritten with item ids. True if it was one."""
    if state.get("cv") is not None:
        return False
    legacy = any(isinstance(i, int) for i in state["items"])
    state["items"] = [item_ids[i] if isinstance(i, int) else i for i in state["items"]]
    state["cv"] = version
    return legacy


__all__ = ["cluster_mapping", "migrate", "recent_clusters", "upgrade_legacy"]
