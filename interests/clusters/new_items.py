"""A catalog grown by items that arrived after it was built (issue 27): the next catalog of a model set.

Items published while the engine runs (`explore items publish`) are placed in the serving level's
clusters from their text; to rank them, a model set must hold them in its catalog. `add_items` appends
them to the catalog's items, each placed at every level by the catalog's own placer (the serving level
keeps the placement the items topic already announced), and leaves the clusters, their ids and their
descriptions as they are: the novelty LM, its table and a user's `known` clusters mean the same under
the grown catalog, and only the item map (and so the version) changes. Cluster sizes count the new
members; traffic and top items stay the build's (the new items have none yet).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np

from interests.clusters.catalog import Catalog, CatalogError
from interests.clusters.placement import TextPlacer


def add_items(catalog: Catalog, placer: TextPlacer, item_ids: Sequence[str], titles: Sequence[str],
              texts: Sequence[str], fixed: Mapping[int, Sequence[int]] | None = None) -> tuple[Catalog, TextPlacer]:
    """(the catalog with `item_ids` appended, the placer for it). `fixed`: level -> the items' clusters already
    decided there (kept as they are); every other level is placed from the texts (`TextPlacer.place`)."""
    if placer.catalog_version != catalog.version:
        raise CatalogError(f"the placer was fitted for catalog {placer.catalog_version}, not {catalog.version}")
    ids = [str(i) for i in item_ids]
    if not len(ids) == len(titles) == len(texts):
        raise ValueError(f"{len(ids)} item ids, {len(titles)} titles and {len(texts)} texts")
    clash = sorted(set(ids) & set(catalog.item_ids))
    if clash or len(set(ids)) != len(ids):
        raise CatalogError(f"items already in catalog {catalog.version} or repeated: {(clash or ids)[:5]}")
    vectors = placer.encode(list(texts))
    columns = []
    for level, k in enumerate(catalog.levels):
        clusters = np.asarray(fixed[level] if fixed and level in fixed else placer.place_vectors(vectors, level)[0])
        if len(clusters) != len(ids) or (len(clusters) and not (clusters.min() >= 0 and clusters.max() < k)):
            raise CatalogError(f"level {level}: {len(clusters)} clusters for {len(ids)} items, or one outside "
                               f"0..{k - 1}")
        columns.append(clusters.astype(np.int32))
    added = np.stack(columns) if ids else np.zeros((len(catalog.levels), 0), np.int32)
    grown = [[replace(c, size=c.size + int((added[level] == c.id).sum())) for c in lv]
             for level, lv in enumerate(catalog.clusters)]
    titles_after = catalog.item_titles + [str(t) for t in titles]
    bigger = Catalog(list(catalog.levels), grown, catalog.item_ids + ids, titles_after,
                     np.concatenate([catalog.assignments, added], axis=1).astype(np.int32),
                     {**catalog.meta, "extends": {"catalog_version": catalog.version, "items_added": len(ids)}})
    return bigger, replace(placer, catalog_version=bigger.version)


__all__ = ["add_items"]
