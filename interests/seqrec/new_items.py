"""Items that arrive after a text SASRec was trained (issue 27): the model ranks them from their text alone.

A text model's item vectors are `warm * id embedding + text_proj(text)` (`interests.seqrec.sasrec`), so an
item added later needs only its text vector, made exactly as the trained items' were. That needs the
encoder the training fitted (TF-IDF's vocabulary, idf and SVD, or MiniLM's mean), which the checkpoint
keeps (`text_encoding` returns its entries; `checkpoint_encoder` reads them back as a
`interests.clusters.placement.TextPlacer` without clusters, whose `encode` is the one definition of "a
text embedded as the build embeds it").

`extend_checkpoint` writes the checkpoint of a bigger catalog: the same weights, the new items appended
as cold rows (`with_items`), the item ids and catalog version of the bigger catalog, and where it came from
(`extends`). `explore seqrec export` and the mixture export then serve it like any other checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from interests.clusters.embeddings import fitted_text
from interests.clusters.placement import TextPlacer
from interests.configs import TrainConfig
from interests.data.datasets import Dataset
from interests.seqrec.sasrec import with_items
from interests.seqrec.train import load_checkpoint

ENCODER_KEY = "text_encoder"  # checkpoint entries: text_encoder, text_fit_dim, text_fit_seed, text_<piece>
PIECES = ("vocabulary", "idf", "components", "singular_values", "mean")


def text_encoding(ds: Dataset, cfg: TrainConfig, progress: bool = False) -> tuple[np.ndarray | None, dict]:
    """([n_items, d] text vectors of `ds`'s items for `cfg.text`, the checkpoint entries of their encoder);
    (None, {}) for text "none". The vectors are the catalog build's text embedding
    (`interests.clusters.embeddings.fitted_text`: TF-IDF reduced by SVD to `cfg.dim`, or MiniLM): one
    definition of an item's text vector. Text is known for every item, those without interactions included,
    so it is no leak of the interactions held out."""
    if cfg.text == "none":
        return None, {}
    if not ds.item_text:
        raise ValueError(f"{ds.name} has no item text: train with text 'none'")
    vectors, used, pieces = fitted_text(ds, cfg.text, cfg.dim, cfg.seed, progress)
    return vectors, {ENCODER_KEY: used, "text_fit_dim": cfg.dim, "text_fit_seed": cfg.seed,
                     **{f"text_{k}": v for k, v in pieces.items()}}


def checkpoint_encoder(ckpt: dict, where: object = "the checkpoint") -> TextPlacer:
    """The text encoder a text model's checkpoint recorded (`text_encoding`), as an encoder without clusters."""
    if not ckpt.get("model_config", {}).get("text_dim"):
        raise ValueError(f"{where} is an id-only SASRec (text 'none'): it has no vector for an item it never saw; "
                         "train it with a text part (`explore seqrec train --text tfidf`)")
    if ENCODER_KEY not in ckpt:
        raise ValueError(f"{where} does not record the text encoder its item vectors were made with (trained before "
                         "checkpoints kept it): train it again to add items to it")
    pieces = {k: ckpt[f"text_{k}"] for k in PIECES if f"text_{k}" in ckpt}
    if "vocabulary" in pieces:
        pieces["vocabulary"] = tuple(str(t) for t in pieces["vocabulary"])
    return TextPlacer(str(ckpt[ENCODER_KEY]), "", int(ckpt["text_fit_dim"]), int(ckpt["text_fit_seed"]), (), (),
                      **{k: np.asarray(v) if k != "vocabulary" else v for k, v in pieces.items()})


def extend_checkpoint(path: Path, item_ids: Sequence[str], texts: Sequence[str], catalog_version: str,
                      out: Path) -> Path:
    """Write to `out` the checkpoint at `path` with `item_ids` appended as cold items (vectors from `texts`
    alone), for the catalog `catalog_version` whose items are the checkpoint's followed by `item_ids`."""
    model, ckpt = load_checkpoint(path)
    old_ids = [str(i) for i in ckpt.get("item_ids", [])]
    if len(old_ids) != model.cfg.n_items:
        raise ValueError(f"{path} does not record its {model.cfg.n_items} item ids: items cannot be added to it")
    if len(item_ids) != len(texts):
        raise ValueError(f"{len(item_ids)} item ids but {len(texts)} texts")
    clash = sorted(set(old_ids) & {str(i) for i in item_ids})
    if clash or len(set(item_ids)) != len(item_ids):
        raise ValueError(f"items already in {path} or repeated: {(clash or list(item_ids))[:5]}")
    vectors = checkpoint_encoder(ckpt, path).encode(list(texts))
    bigger = with_items(model, torch.from_numpy(vectors))
    doc = {**ckpt, "model": bigger.state_dict(), "model_config": bigger.cfg.to_dict(),
           "item_ids": old_ids + [str(i) for i in item_ids], "catalog_version": catalog_version,
           "extends": {"checkpoint": str(path), "catalog_version": ckpt.get("catalog_version"),
                       "items_added": len(item_ids)}}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v
                for k, v in doc.items()}, out)
    return out


__all__ = ["checkpoint_encoder", "extend_checkpoint", "text_encoding"]
