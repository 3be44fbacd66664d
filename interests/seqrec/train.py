"""Training and evaluating SASRec: full-softmax cross-entropy (or sampled negatives), early stopping
on validation NDCG@10, deterministic by seed, checkpoints that record the catalog version.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from interests.configs import TrainConfig
from interests.data.splits import LeaveOneOut, pad_left, ranking_metrics, ranks_of, training_windows
from interests.seqrec.sasrec import SASRec, SASRecConfig


@dataclass
class TrainResult:
    best_epoch: int
    valid: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def set_determinism(seed: int, threads: int = 0) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if threads:
        torch.set_num_threads(threads)


def loss_fn(model: SASRec, x: torch.Tensor, y: torch.Tensor, kind: str, gen: torch.Generator,
            teachers: Sequence[SASRec] = (), id_dropout: float = 0.0) -> torch.Tensor:
    """Mean loss over positions with a target (y > 0).

    With `teachers` (SASRecs of other seeds, frozen), "ce" is half the usual cross-entropy and half
    the cross-entropy against the teachers' mean next-item distribution: one model learns what an
    ensemble of seeds agrees on (the seeds' exploration scores differ by up to 0.02 hit@5).

    A text model's softmax runs over its warm items only (`training_scores`). With `id_dropout` (text
    models, train mode) one draw per batch (`id_dropout_mask`) makes some warm items text-only in
    both the histories and the scores.
    """
    dropped = id_dropout_mask(model, id_dropout, gen)
    hidden = model(x, dropped)
    mask = y > 0
    h, target = hidden[mask], y[mask]
    if kind == "ce" and teachers:
        with torch.no_grad():
            soft = sum(torch.softmax(t.item_scores(t(x)[mask]), -1) for t in teachers) / len(teachers)
            if model.cfg.text_dim:  # the teachers' mass on items the student leaves out, spread over the rest
                soft = soft * model.warm[1:]
                soft = soft / soft.sum(-1, keepdim=True)
        logp = training_scores(model, h, dropped).log_softmax(-1)
        return 0.5 * F.nll_loss(logp, target - 1) - 0.5 * (soft * logp).sum(-1).mean()
    if kind == "ce":
        return F.cross_entropy(training_scores(model, h, dropped), target - 1)
    if kind == "bce":
        table = model.item_vectors(dropped)
        if model.cfg.text_dim:  # negatives among the warm items, as the softmax above
            pool = model.warm.nonzero().squeeze(1)
            neg = pool[torch.randint(0, len(pool), target.shape, generator=gen)]
        else:
            neg = torch.randint(1, model.cfg.n_items + 1, target.shape, generator=gen)
        pos_logit = (h * table[target]).sum(-1)
        neg_logit = (h * table[neg]).sum(-1)
        return F.binary_cross_entropy_with_logits(pos_logit, torch.ones_like(pos_logit)) + \
            F.binary_cross_entropy_with_logits(neg_logit, torch.zeros_like(neg_logit))
    raise ValueError(f"loss must be 'ce' or 'bce', got {kind!r}")


def id_dropout_mask(model: SASRec, p: float, gen: torch.Generator) -> torch.Tensor | None:
    """[n_items + 1] bool: items whose id embedding this batch leaves out, each with probability `p`.

    DropoutNet's id dropout (Volkovs et al., NeurIPS 2017): a warm item that is its text part alone
    for a batch trains `text_proj` to place items without an id embedding, as cold items are served.
    One draw per item per batch (not per occurrence), so the history and the softmax of a batch
    read one item table. None (nothing drawn, the generator untouched: p 0 trains exactly as
    before) when p is 0, for an id-only model, or in eval mode: evaluation and serving never drop.
    """
    if not p or not model.cfg.text_dim or not model.training:
        return None
    return torch.rand(model.cfg.n_items + 1, generator=gen) < p


def training_scores(model: SASRec, hidden: torch.Tensor, id_dropped: torch.Tensor | None = None) -> torch.Tensor:
    """`model.item_scores`, with a text model's cold items (no training interaction) left out of the softmax.

    An item that had no interaction before training stands for one that does not exist yet: it must
    not be a negative either, or the text projection learns to push down the text of exactly the
    items that will be new. Left out with a large finite score (not -inf: 0 * -inf is NaN where a
    distribution is zero). The id-only model keeps its full softmax, as before. `id_dropped`:
    `id_dropout_mask` (dropped items stay in the softmax, as their text part).
    """
    scores = model.item_scores(hidden, id_dropped)
    if not model.cfg.text_dim:
        return scores
    return scores.masked_fill(~model.warm[1:], -1e9)


@torch.no_grad()
def evaluate(model: SASRec, histories: list[np.ndarray], targets: np.ndarray, k: int = 10,
             batch_size: int = 256) -> dict[str, float]:
    """HR/NDCG/MRR@k, ranking every item (the protocol of `interests.data.splits`)."""
    model.eval()
    ranks = []
    for start in range(0, len(targets), batch_size):
        x = torch.from_numpy(pad_left(histories[start:start + batch_size], model.cfg.max_len))
        scores = model.last_scores(x).numpy()
        ranks.append(ranks_of(scores, targets[start:start + batch_size]))
    return ranking_metrics(np.concatenate(ranks), k)


def train(split: LeaveOneOut, cfg: TrainConfig, progress: bool = True,
          checkpoint: Path | None = None, extra: dict | None = None,
          teachers: Sequence[SASRec] = (), item_text: np.ndarray | None = None) -> tuple[SASRec, TrainResult]:
    """Train with early stopping; the best model (by validation NDCG@10) is returned and saved.

    `teachers`: distil their mean next-item distribution too (`loss_fn`); they must have trained on
    the same interactions (the caller checks), or the student learns from a model that saw more.
    `item_text` [n_items, text_dim] (0-based items): the items' text embeddings, for the text model
    (`interests.seqrec.sasrec`); every item needs one, those without training interactions included.
    """
    from tqdm import tqdm

    if (cfg.text != "none") != (item_text is not None):
        raise ValueError(f"text {cfg.text!r} needs item_text exactly when it is not 'none' "
                         "(`interests.seqrec.new_items.text_encoding`)")
    set_determinism(cfg.seed, cfg.threads)
    inputs, targets = training_windows(split.train, cfg.max_len)
    model = new_model(split.n_items, cfg, item_text, np.union1d(inputs, targets))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    x_all, y_all = torch.from_numpy(inputs), torch.from_numpy(targets)
    gen = torch.Generator().manual_seed(cfg.seed)
    best, best_state, since, history = -1.0, None, 0, []
    result = TrainResult(0, {})
    t0 = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = torch.randperm(len(x_all), generator=gen)
        total, batches = 0.0, range(0, len(order), cfg.batch_size)
        bar = tqdm(batches, desc=f"epoch {epoch}", unit="batch", leave=False, disable=not progress)
        for start in bar:
            idx = order[start:start + cfg.batch_size]
            loss = loss_fn(model, x_all[idx], y_all[idx], cfg.loss, gen, teachers, cfg.id_dropout)
            opt.zero_grad()
            loss.backward()
            opt.step()
            value = loss.item()
            total += value * len(idx)
            bar.set_postfix(loss=f"{value:.3f}")
        valid = evaluate(model, split.valid_history, split.valid_target)
        history.append({"epoch": epoch, "loss": total / len(order), **valid})
        if progress:
            tqdm.write(f"epoch {epoch:3d}  loss {total / len(order):.4f}  valid HR@10 {valid['HR@10']:.4f}  "
                       f"NDCG@10 {valid['NDCG@10']:.4f}  ({time.perf_counter() - t0:.0f} s)")
        if valid["NDCG@10"] > best:
            best, since = valid["NDCG@10"], 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            result = TrainResult(epoch, valid)
        else:
            since += 1
            if since >= cfg.patience:
                break
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    result.history, result.seconds = history, time.perf_counter() - t0
    if checkpoint is not None:
        save_checkpoint(checkpoint, model, cfg, result, extra or {})
    return model, result


def new_model(n_items: int, cfg: TrainConfig, item_text: np.ndarray | None, trained_ids: np.ndarray) -> SASRec:
    """An untrained SASRec; with `item_text`, a text model whose warm items are `trained_ids` (1-based; 0 ignored).

    Warm means "in a training window" (as input or target), so exactly the items whose id embedding
    training can reach.
    """
    if item_text is None:
        return SASRec(SASRecConfig(n_items, cfg.max_len, cfg.dim, cfg.heads, cfg.blocks, cfg.dropout))
    warm = np.zeros(n_items + 1, dtype=bool)
    warm[np.asarray(trained_ids, np.int64)] = True
    return SASRec(SASRecConfig(n_items, cfg.max_len, cfg.dim, cfg.heads, cfg.blocks, cfg.dropout, item_text.shape[1]),
                  torch.from_numpy(np.ascontiguousarray(item_text, np.float32)), torch.from_numpy(warm[1:]))


def save_checkpoint(path: Path, model: SASRec, cfg: TrainConfig, result: TrainResult, extra: dict) -> Path:
    """Weights, model and training config, validation result, and `extra` (catalog version, item ids).

    Only tensors and plain Python values are stored (numpy arrays become tensors), so that loading
    never needs to unpickle arbitrary objects.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plain = {k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v for k, v in extra.items()}
    torch.save({"model": model.state_dict(), "model_config": model.cfg.to_dict(), "train_config": asdict(cfg),
                "best_epoch": result.best_epoch, "valid": result.valid, "history": result.history, **plain}, path)
    return path


def load_checkpoint(path: Path) -> tuple[SASRec, dict]:
    """(model in eval mode, the whole checkpoint dict; stored arrays back as numpy).

    Weights only: a checkpoint is untrusted input, and unpickling arbitrary objects runs code.
    """
    import pickle

    try:
        ckpt = torch.load(Path(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path}: not a plain checkpoint (it holds objects other than tensors and plain values; "
                         f"an older version of this project wrote numpy arrays: retrain it): {e}") from None
    ckpt = {k: v.numpy() if isinstance(v, torch.Tensor) and k != "model" else v for k, v in ckpt.items()}
    model = SASRec(SASRecConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    model.eval()
    return model, ckpt


def next_item_probabilities(model: SASRec) -> Callable[[list[np.ndarray]], np.ndarray]:
    """histories (0-based items) -> [B, n_items] softmax of the model's next-item scores.

    The item policy as an exploration baseline: summed per cluster, these say which clusters the
    recommender itself would send the user to next.
    """
    def probs(histories: list[np.ndarray]) -> np.ndarray:
        x = torch.from_numpy(pad_left([np.asarray(h, np.int64) + 1 for h in histories], model.cfg.max_len))
        with torch.no_grad():
            return torch.softmax(model.last_scores(x).double(), dim=1).numpy()

    return probs
