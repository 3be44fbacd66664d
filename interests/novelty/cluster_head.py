"""The sequence expert at O(clusters) per user: a cluster head on SASRec's last hidden state.

"SASRec explores" sums the item policy's next-item probabilities over each cluster's items: the
strongest single explorer the judge knows, but O(catalog) per user, which would undo what the
clustered top-N (`interests.seqrec.clustered_topn`) bought the slates. The head scores each cluster from
the hidden state with R prototypes (`ClusterHead`), O(R x dim x clusters), trained on two things
at once:

- distillation: at every position of the training windows, the cross-entropy against SASRec's own
  exact cluster distribution (so it keeps what the exact sum knows, on ~all training positions);
- novelty: at every novel moment before the SASRec's training cut (a user about to touch a cluster
  for the first time), the cross-entropy of the cluster they went to, over the clusters they did
  not know: the question the engine actually asks, which the next-item objective never isolates.

The SASRec stays frozen (the slate still comes from it unchanged). The head trains on the same
period as its SASRec and early-stops on the latest tenth of its novel moments, so a head built on a
SASRec trained before the validation period has seen no validation moment either.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from interests.novelty.mixture import known_mask


class ClusterHead(nn.Module):
    """Hidden states [B, D] -> a logit per cluster [B, C]: logsumexp over R prototypes per cluster.

    The exact cluster score is log sum_{i in c} exp(h . e_i), a soft maximum over the cluster's
    items; R learned prototypes (vectors and biases) per cluster are that sum with R terms instead of
    |c|, so O(R x D x C) per user. R = 1 is a linear head. Prototypes start as R of the cluster's own
    item embeddings (`init_from_items`), then distillation fits them.
    """

    def __init__(self, dim: int, n_clusters: int, prototypes: int = 1) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n_clusters, prototypes, dim))
        self.bias = nn.Parameter(torch.zeros(n_clusters, prototypes))

    @property
    def dims(self) -> tuple[int, int, int]:
        """(clusters, prototypes, dim)."""
        c, r, d = self.weight.shape
        return c, r, d

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return (torch.einsum("bd,crd->bcr", hidden, self.weight) + self.bias).logsumexp(-1)

    @torch.no_grad()
    def init_from_items(self, item_emb: torch.Tensor, item_cluster: np.ndarray, counts: np.ndarray,
                        seed: int = 0) -> None:
        """Each cluster's prototypes: R of its items drawn by traffic, biases log(|c| / R) (a cluster's
        score grows with its size, as the exact sum does). Empty clusters keep zeros and a low bias."""
        rng = np.random.default_rng(seed)
        n, r, _ = self.dims
        for c in range(n):
            members = np.flatnonzero(item_cluster == c)
            if not len(members):
                self.bias[c] = -30.0
                continue
            p = counts[members] + 1.0
            pick = rng.choice(members, size=r, replace=len(members) < r, p=p / p.sum())
            self.weight[c] = item_emb[torch.from_numpy(pick)].to(self.weight.dtype)
            self.bias[c] = float(np.log(len(members) / r))


@dataclass
class HeadData:
    """What the head trains on: distillation positions and novel moments (hidden states precomputed)."""

    distill_hidden: torch.Tensor  # [P, D]
    distill_target: torch.Tensor  # [P, C]: SASRec's exact cluster distribution at each position
    novel_hidden: torch.Tensor  # [N, D]
    novel_target: torch.Tensor  # [N] cluster ids
    novel_known: torch.Tensor  # [N, C] bool: clusters the user knew (masked out)


def cluster_sums(probs: torch.Tensor, item_cluster: torch.Tensor, n_clusters: int) -> torch.Tensor:
    """[B, C]: next-item probabilities [B, items] (0-based items) summed per cluster (the exact form)."""
    out = torch.zeros(probs.shape[0], n_clusters, dtype=probs.dtype)
    return out.index_add_(1, item_cluster, probs)


def train_head(data: HeadData, n_clusters: int, distill_weight: float = 1.0, epochs: int = 60, patience: int = 5,
               lr: float = 1e-2, batch: int = 512, seed: int = 0, l2: float = 1e-4,
               head: ClusterHead | None = None) -> tuple[ClusterHead, dict]:
    """Fit the head (a new linear one, or `head` as initialised); early stopping on the novel
    log-likelihood of the latest tenth of novel moments.

    The novel moments are expected in time order (the latest last): the held-out tenth is the
    future of the rest, as validation and test are to training.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    n = len(data.novel_target)
    cut = n - max(1, n // 10)
    head = (head or ClusterHead(data.novel_hidden.shape[1], n_clusters)).double()
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=l2)
    best, best_state, since, history = float("inf"), None, 0, []
    for epoch in range(1, epochs + 1):
        head.train()
        order = torch.randperm(cut, generator=gen)
        dorder = torch.randperm(len(data.distill_target), generator=gen)
        steps = max(1, (cut + batch - 1) // batch)
        dbatch = max(1, len(dorder) // steps)
        for s in range(steps):
            idx, didx = order[s * batch:(s + 1) * batch], dorder[s * dbatch:(s + 1) * dbatch]
            loss = novel_loss(head, data, idx)
            if distill_weight and len(didx):
                logp = head(data.distill_hidden[didx]).log_softmax(-1)
                loss = loss + distill_weight * -(data.distill_target[didx] * logp).sum(-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        head.eval()
        with torch.no_grad():
            held = float(novel_loss(head, data, torch.arange(cut, n)))
        history.append({"epoch": epoch, "held_out_novel_nll": held})
        if held < best:
            best, since, best_state = held, 0, {k: v.clone() for k, v in head.state_dict().items()}
        else:
            since += 1
            if since >= patience:
                break
    assert best_state is not None
    head.load_state_dict(best_state)
    head.eval()
    return head, {"held_out_novel_nll": best, "epochs": len(history), "novel_moments": n, "held_out": n - cut,
                  "distill_positions": len(data.distill_target), "distill_weight": distill_weight}


def novel_loss(head: ClusterHead, data: HeadData, idx: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the novel targets over the clusters each user did not know."""
    logits = head(data.novel_hidden[idx]).masked_fill(data.novel_known[idx], float("-inf"))
    return F.cross_entropy(logits, data.novel_target[idx])


def head_log_scores(head: ClusterHead, hidden: np.ndarray | torch.Tensor) -> np.ndarray:
    """[B, C] log-softmax of the head at hidden states [B, D]: the sequence expert's log-scores."""
    h = torch.as_tensor(hidden, dtype=head.weight.dtype)  # the head's own precision: it is not converted
    with torch.no_grad():
        return head(h).log_softmax(-1).double().numpy()


@torch.no_grad()
def last_hidden(model, histories: list[np.ndarray], batch: int = 256) -> np.ndarray:  # type: ignore[no-untyped-def]
    """[B, D] SASRec's hidden state after each history (0-based items): what the head reads."""
    from interests.data.splits import pad_left

    model.eval()
    out = []
    for start in range(0, len(histories), batch):
        x = torch.from_numpy(pad_left([np.asarray(h, np.int64) + 1 for h in histories[start:start + batch]],
                                      model.cfg.max_len))
        out.append(model(x)[:, -1].double().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.cfg.dim))


@torch.no_grad()
def head_data(model, sequences: list[np.ndarray], item_cluster: np.ndarray, n_clusters: int,  # type: ignore[no-untyped-def]
              novel_histories: list[np.ndarray], novel_targets: np.ndarray, novel_known: list[frozenset[int]],
              max_positions: int = 200_000, seed: int = 0, batch: int = 256) -> HeadData:
    """The head's training data from a frozen SASRec.

    `sequences`: the users' item sequences (0-based) of the SASRec's own training period, cut into
    its training windows; a seeded sample of `max_positions` positions is distilled. The novel
    moments come with their histories (0-based), target clusters and known sets, in time order.
    """
    from interests.data.splits import training_windows

    inputs, targets = training_windows([np.asarray(s, np.int64) + 1 for s in sequences], model.cfg.max_len)
    clusters = torch.from_numpy(np.asarray(item_cluster, np.int64))
    hidden, dist = [], []
    model.eval()
    for start in range(0, len(inputs), batch):
        x, y = torch.from_numpy(inputs[start:start + batch]), torch.from_numpy(targets[start:start + batch])
        h = model(x)[y > 0]
        hidden.append(h.double())
        dist.append(cluster_sums(torch.softmax(model.item_scores(h).double(), -1), clusters, n_clusters))
    dh, dt = torch.cat(hidden), torch.cat(dist)
    if len(dh) > max_positions:
        keep = torch.from_numpy(np.sort(np.random.default_rng(seed).choice(len(dh), max_positions, replace=False)))
        dh, dt = dh[keep], dt[keep]
    return HeadData(dh, dt, torch.from_numpy(last_hidden(model, novel_histories, batch)),
                    torch.from_numpy(np.asarray(novel_targets, np.int64)),
                    torch.from_numpy(known_mask(novel_known, n_clusters)))


HEAD_FILE = "cluster_head.pt"  # a level's serving head, beside its mixture.json


def save_head(path, head: ClusterHead, meta: dict) -> None:  # type: ignore[no-untyped-def]
    """Weights and plain metadata (the SASRec it reads, its level, how it trained)."""
    c, r, d = head.dims
    torch.save({"state": head.state_dict(), "dim": d, "clusters": c, "prototypes": r, "meta": meta}, path)


def load_head(path) -> tuple[ClusterHead, dict]:  # type: ignore[no-untyped-def]
    """(head in eval mode, its metadata); weights only, nothing unpickled."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    head = ClusterHead(int(ckpt["dim"]), int(ckpt["clusters"]), int(ckpt.get("prototypes", 1))).double()
    head.load_state_dict(ckpt["state"])
    head.eval()
    return head, ckpt["meta"]
