"""Does a KV cache pay for the novelty LM? And what the constrained search costs, PyTorch vs ONNX vs Triton.

A KV cache saves re-reading the prompt at every decoding step. Its best case is a step that reads
one new token; without it a step reads the whole sequence (prompt + description so far, ~20-40
tokens). This measures the exported graph's cost per step at both lengths for the batch sizes the
beam search uses: if reading the whole sequence costs little more than one token, the cache (and
the past-key-value inputs and outputs it adds to the graph and to every Triton call) cannot pay.
Then it times proposals for real contexts through the PyTorch LM, the ONNX twin and Triton.

Run: python benchmarks/novelty_serving.py --model runs/ml-novelty [--contexts 256]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from exporters.novelty_onnx import OnnxNextLogProbs, export_generator
from interests.constrained import DescriptionTrie, beam_search
from interests.novelty_lm import NoveltyLM
from streams.inference.novelty import OnnxNovelty, TritonNovelty


def per_call_ms(fn, arg, repeat: int = 20) -> float:  # type: ignore[no-untyped-def]
    fn(arg)
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn(arg)
    return (time.perf_counter() - t0) / repeat * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("runs/novelty"))
    parser.add_argument("--contexts", type=int, default=256)
    parser.add_argument("--m", type=int, default=5)
    parser.add_argument("--beam", type=int, default=8)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    lm = NoveltyLM.load(args.model)
    work = Path(tempfile.mkdtemp(prefix="bench-novelty-"))
    onnx_path = export_generator(lm, work / "repo")
    onnx = OnnxNextLogProbs(onnx_path, lm.pad_id, threads=2)
    n, k = len(lm.descriptions), lm.meta.get("k", 2)
    rng = np.random.default_rng(0)
    contexts = np.stack([rng.permutation(n)[:k] for _ in range(args.contexts)]).astype(np.int64)
    full = [lm.prompt_ids(c) + lm.pieces[int(c[0])][:3] for c in contexts]
    print(f"novelty LM: {n} clusters, vocab {len(lm.tokenizer)}, prompt+prefix length "
          f"{int(np.mean([len(s) for s in full]))} tokens\n")
    print(f"{'batch':>5} {'1 token ms':>11} {'full seq ms':>12} {'ratio':>6}")
    for batch in (8, 64, 256):
        one = [[s[-1]] for s in full[:batch]]
        a, b = per_call_ms(onnx, one), per_call_ms(onnx, full[:batch])
        print(f"{batch:>5} {a:>11.2f} {b:>12.2f} {b / a:>6.2f}")

    exclude = np.zeros((len(contexts), n), bool)
    trie = DescriptionTrie(lm.sequences)
    t0 = time.perf_counter()
    beam_search(lm.next_logprobs, trie, [lm.prompt_ids(c) for c in contexts], [set(c.tolist()) for c in contexts],
                args.m, args.beam)
    torch_s = time.perf_counter() - t0
    twin = OnnxNovelty(onnx_path.parent, args.m, args.beam)
    t0 = time.perf_counter()
    twin.propose(contexts, exclude)
    onnx_s = time.perf_counter() - t0
    from streams.infra.triton import EmbeddedTriton

    with EmbeddedTriton(work / "repo", work / "triton") as server:
        client = TritonNovelty(server.grpc_url, timeout_s=120)
        client.propose(contexts[:2], exclude[:2])
        t0 = time.perf_counter()
        for start in range(0, len(contexts), 64):
            client.propose(contexts[start:start + 64], exclude[start:start + 64])
        triton_s = time.perf_counter() - t0
        client.close()
    print(f"\ntop-{args.m} novel clusters (beam {args.beam}) for {len(contexts)} contexts:")
    for name, secs in (("PyTorch", torch_s), ("onnxruntime twin", onnx_s), ("Triton (batches of 64)", triton_s)):
        print(f"  {name:24} {secs:6.2f} s  {len(contexts) / secs:7.0f} contexts/s")


if __name__ == "__main__":
    main()
