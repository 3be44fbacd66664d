"""Contracts between training, export and serving, pinned: the prompt the LM is trained on is the
prompt Triton's model and the twin build, token for token; padding and positions."""

from __future__ import annotations

import numpy as np

from interests.novelty.examples import prompt
from interests.novelty.lm import NoveltyLM, train_tokenizer
from interests.runtime.constrained import Generator, assemble_prompt, left_pad
from streams.inference.seqrec import pad_histories

DESCRIPTIONS = ["space opera", "romantic comedy", "film noir detective"]


def test_prompt_text_and_tokens_are_pinned_and_the_same_in_training_and_serving() -> None:
    lm = NoveltyLM(None, train_tokenizer(DESCRIPTIONS), DESCRIPTIONS)
    text = prompt([2, 0], DESCRIPTIONS)
    assert text == "The user enjoyed: film noir detective; space opera. A new interest for the user:"
    pinned = [12, 8, 14, 3, 15, 19, 13, 10, 7, 5, 9, 11, 18, 17, 16, 20, 8, 3]
    assert lm.prompt_ids([2, 0]) == pinned
    assert lm.encode(text) == pinned  # pieces assembled = the text tokenized whole
    serving = Generator(lm.decoder_spec(), lambda ids, mask: np.zeros((len(ids), 1)), top_m=2, beam=2)
    assert serving.prompt(np.array([2, 0])) == pinned
    assert assemble_prompt([1], [2], [3], [[4], [5, 6]], [1, 0, 1]) == [1, 5, 6, 2, 4, 2, 5, 6, 3]
    assert assemble_prompt([1], [2], [3], [[4]], []) == [1, 3]


def test_left_padding_right_aligns_and_keeps_the_newest() -> None:
    ids, mask = left_pad([[5, 6, 7], [8], []], pad_id=9)
    assert ids.tolist() == [[5, 6, 7], [9, 9, 8], [9, 9, 9]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]
    ids, mask = left_pad([[1, 2, 3, 4], [5]], pad_id=0, length=2)
    assert ids.tolist() == [[3, 4], [0, 5]] and mask.tolist() == [[1, 1], [0, 1]]
    # seqrec's histories: 1-based ids, 0 pads, the newest max_len items
    assert pad_histories([np.array([1, 2, 3]), [4]], 2).tolist() == [[2, 3], [0, 4]]


def test_position_ids_count_real_tokens_only() -> None:
    import torch

    from interests.novelty.lm import position_ids

    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert position_ids(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]
    # a cached step's new token (Step): the number of real tokens before it
    assert (mask.sum(-1, keepdim=True) - 1).tolist() == position_ids(mask)[:, -1:].tolist()
