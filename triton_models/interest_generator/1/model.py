"""Triton Python-backend model `interest_generator`: novel clusters by constrained beam search.

Every request of a dynamic batch is decoded together: the beams of all requests go to the ONNX
language model in one call per decoding step. The decoding is `constrained.py` (the project's
interests/constrained.py, copied here at export), so answers equal the PyTorch path's.
"""

import json
import os
import sys

# The embedded stub ignores PYTHONPATH when it builds sys.path; the launcher puts the engine's
# site-packages there (streams/infra/triton.py), so honour it before importing numpy/onnxruntime.
for _path in reversed(os.environ.get("PYTHONPATH", "").split(os.pathsep)):
    if _path and _path not in sys.path:
        sys.path.insert(0, _path)

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from constrained import DescriptionTrie, beam_search  # noqa: E402

EXCLUDED = -1e9


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        here = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(here, "decoder.json")) as f:
            self.spec = json.load(f)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_threads", "1"))
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(os.path.join(here, "model.onnx"), sess_options=options,
                                            providers=["CPUExecutionProvider"])
        self.trie = DescriptionTrie(self.spec["sequences"])
        self.top_m, self.beam = int(params.get("top_m", "5")), int(params.get("beam", "8"))

    def next_logprobs(self, sequences: list) -> np.ndarray:
        length = max(len(s) for s in sequences)
        ids = np.full((len(sequences), length), self.spec["pad_id"], dtype=np.int64)
        mask = np.zeros((len(sequences), length), dtype=np.int64)
        for i, s in enumerate(sequences):
            ids[i, length - len(s):] = s
            mask[i, length - len(s):] = 1
        return self.session.run(["logprobs"], {"input_ids": ids, "attention_mask": mask})[0]

    def prompt(self, context: np.ndarray) -> list:
        ids = list(self.spec["head"])
        for i, c in enumerate(context.tolist()):
            ids += (self.spec["sep"] if i else []) + self.spec["pieces"][int(c)]
        return ids + self.spec["tail"]

    def execute(self, requests: list) -> list:
        n = len(self.spec["pieces"])
        prompts, excludes, sizes, errors = [], [], [], []
        for r in requests:
            contexts = pb_utils.get_input_tensor_by_name(r, "context").as_numpy()
            masks = pb_utils.get_input_tensor_by_name(r, "exclude").as_numpy().astype(bool)
            bad = contexts.shape[0] != masks.shape[0] or masks.shape[1] != n or contexts.min() < 0 \
                or contexts.max() >= n
            errors.append(f"interest_generator: context ids must lie in [0, {n}) and exclude must have {n} "
                          "flags per row" if bad else None)
            sizes.append(0 if bad else contexts.shape[0])
            if not bad:
                for ctx, mask in zip(contexts, masks, strict=True):
                    prompts.append(self.prompt(ctx))
                    excludes.append(set(np.flatnonzero(mask).tolist()) | set(ctx.tolist()))
        results = beam_search(self.next_logprobs, self.trie, prompts, excludes, self.top_m, self.beam) \
            if prompts else []
        responses, row = [], 0
        for size, error in zip(sizes, errors, strict=True):
            if error:
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(error)))
                continue
            clusters = np.full((size, self.top_m), -1, dtype=np.int64)
            scores = np.full((size, self.top_m), EXCLUDED, dtype=np.float32)
            for i in range(size):
                for j, (c, s) in enumerate(results[row + i]):
                    clusters[i, j], scores[i, j] = c, s
            row += size
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("clusters", clusters), pb_utils.Tensor("scores", scores)]))
        return responses
