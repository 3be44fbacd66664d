"""Alignment with what users take up: the model trained on feedback, best-of-n, cross-critics.

Owns `model.py` (how likely users who share a context take up a proposed cluster), `best_of_n.py`
(the LM proposes, the alignment model re-ranks table rows) and `critics.py` (generators judged by
critics they were not trained with).

May import: `interests`, `interests.data`, `interests.clusters`, `interests.novelty`.
"""
