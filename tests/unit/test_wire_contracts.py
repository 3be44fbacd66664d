"""Contracts between training, export and serving, pinned: the prompt the LM is trained on is the
prompt Triton's model and the twin build, token for token."""

from __future__ import annotations

import numpy as np

from interests.constrained import Generator, assemble_prompt
from interests.novelty_data import prompt
from interests.novelty_lm import NoveltyLM, train_tokenizer

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
