"""The serving runtime's shared contract: what Triton's models and the worker's twins run (numpy, onnxruntime).

Owns `constrained.py`: the constrained beam search over the catalog's descriptions, the prompt
assembly, left padding, `EXCLUDED` (the score of a slot nothing allowed fills) and the onnxruntime
set-up; the export copies that file beside Triton's `interest_generator` model, so it imports
nothing of this project.

May import: nothing of this project.
"""
