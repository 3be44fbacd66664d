"""Novelty policies: which cluster, new to the user, to propose next.

Owns the language model's side (`examples.py` the fine-tuning data and prompts, `lm.py`,
`base_models.py`, `prior.py`, `precompute.py` the table of every context), the rules without a
language model (`rules.py`: every baseline and `top_m`, the one reading of a policy), and the
mixture of experts (`mixture.py`, `fit_mixture.py`, `cluster_head.py`, `mixture_topn.py`).

May import: `interests`, `interests.runtime`, `interests.data`, `interests.clusters`, `interests.seqrec`.
"""
