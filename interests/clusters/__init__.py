"""Interest clusters: item embeddings, clustering, descriptions in words, and the versioned catalog.

Owns `embeddings.py`, `clustering.py`, `describe.py`, `build.py` (dataset -> catalog) and
`catalog.py`, the contract between the language model, the item recommender and the engine;
`placement.py` places an item that arrives later from its text, `new_items.py` grows a catalog by such items.

May import: `interests`, `interests.data`.
"""
