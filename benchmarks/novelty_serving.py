"""The novelty LM's KV cache, measured: no cache vs cache, per step and per proposal, PyTorch vs ONNX vs Triton.

Without a cache every decoding step re-reads each hypothesis's whole sequence (prompt + description
so far, ~30-40 tokens) through `model.onnx`; with it, `prefill.onnx` encodes each prompt once and
every step feeds one token per hypothesis to `step.onnx` over its parent's keys and values. This
prints, side by side:

1. the cost of one graph call at the batch sizes the beam search uses: the full sequence through the
   no-cache graph vs one token through the step graph (past as long as the sequence), and the ratio;
2. top-M proposals for the same contexts through PyTorch, the onnxruntime twin and Triton, each with
   and without the cache (Triton: the `kv_cache` parameter of `interest_generator`), with contexts/s,
   the speed-up, and the largest difference between the two paths' answers (clusters must be equal,
   scores within 1e-4).

Run: python benchmarks/novelty_serving.py --model runs/ml-novelty [--contexts 256] [--no-prior] [--no-triton]
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from exporters.novelty_onnx import OnnxNextLogProbs, export_generator
from interests.novelty.lm import NoveltyLM
from interests.runtime.constrained import DescriptionTrie, beam_search, beam_search_cached, onnx_kv_cache
from streams.inference.novelty import OnnxNovelty, TritonNovelty


def interleaved_ms(fns: list, repeat: int = 15) -> list[float]:  # type: ignore[type-arg]
    """Median ms per call of each function, the calls alternating (a load change hits all alike)."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            times[i].append((time.perf_counter() - t0) * 1000)
    return [float(np.median(t)) for t in times]


def interleaved_runs(fns: dict, rounds: int) -> dict:  # type: ignore[type-arg]
    """(answer, median seconds) of each named function over `rounds` alternating runs."""
    out: dict = {name: [None, []] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            out[name][0] = fn()
            out[name][1].append(time.perf_counter() - t0)
    return {name: (answer, float(np.median(secs))) for name, (answer, secs) in out.items()}


def as_arrays(results: list[list[tuple[int, float]]], m: int) -> tuple[np.ndarray, np.ndarray]:
    clusters, scores = np.full((len(results), m), -1), np.full((len(results), m), -1e9, dtype=np.float32)
    for i, r in enumerate(results):
        for j, (c, s) in enumerate(r):
            clusters[i, j], scores[i, j] = c, s
    return clusters, scores


def same(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> str:
    if not np.array_equal(a[0], b[0]):
        return f"CLUSTERS DIFFER in {int((a[0] != b[0]).any(1).sum())} rows"
    return f"same clusters, max |score diff| {float(np.abs(a[1] - b[1]).max()):.1e}"


def no_cache_repository(repo: Path, dest: Path) -> Path:
    """A copy of the repository whose interest_generator runs without the cache."""
    shutil.copytree(repo, dest)
    config = dest / "interest_generator" / "config.pbtxt"
    config.write_text(re.sub(r'(key: "kv_cache", value: \{ string_value: )"true"', r'\1"false"', config.read_text()))
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("runs/novelty"))
    parser.add_argument("--contexts", type=int, default=256)
    parser.add_argument("--m", type=int, default=5)
    parser.add_argument("--beam", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds of every path")
    parser.add_argument("--no-triton", action="store_true")
    parser.add_argument("--no-prior", action="store_true", help="decode without the model's popularity prior")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    lm = NoveltyLM.load(args.model)
    if args.no_prior:
        lm.meta.pop("prior", None)
    work = Path(tempfile.mkdtemp(prefix="bench-novelty-"))
    onnx_path = export_generator(lm, work / "repo")
    full_graph = OnnxNextLogProbs(onnx_path, lm.pad_id, threads=args.threads)
    cache = onnx_kv_cache(onnx_path.parent, lm.pad_id, threads=args.threads)
    n, k = len(lm.descriptions), lm.meta.get("k", 2)
    rng = np.random.default_rng(0)
    contexts = np.stack([rng.permutation(n)[:k] for _ in range(args.contexts)]).astype(np.int64)
    full = [lm.prompt_ids(c) + lm.pieces[int(c[0])][:3] for c in contexts]
    length = int(np.mean([len(s) for s in full]))
    prior = lm.prior
    print(f"novelty LM: {n} clusters, vocab {len(lm.tokenizer)}, {lm.meta.get('lm_config', {}).get('layers')} layers; "
          f"prompt + prefix ~{length} tokens; prior alpha {(lm.meta.get('prior') or {}).get('alpha', 0):g}; "
          f"{args.threads} threads\n")
    print("one decoding step (onnxruntime; median of interleaved calls):")
    print(f"{'batch':>7} {'no cache: full seq ms':>22} {'cache: 1 token ms':>18} {'ratio':>6}")
    for batch in (8, 64, 256, 512):
        seqs = [full[i % len(full)] for i in range(batch)]
        _, state = cache.prefill([s[:-1] for s in seqs])
        parents, last = np.arange(batch)[::-1].copy(), np.array([s[-1] for s in seqs])
        # the cached step includes gathering the parents' rows, as in the search
        a, b = interleaved_ms([lambda seqs=seqs: full_graph(seqs),
                               lambda state=state, parents=parents, last=last: cache.step(state, parents, last)])
        print(f"{batch:>7} {a:>22.2f} {b:>18.2f} {a / b:>6.1f}")

    exclude = np.zeros((len(contexts), n), bool)
    trie = DescriptionTrie(lm.sequences)
    prompts, excludes = [lm.prompt_ids(c) for c in contexts], [set(c.tolist()) for c in contexts]

    def chunks(fn):  # type: ignore[no-untyped-def]
        parts = [fn(slice(s, s + 64)) for s in range(0, len(contexts), 64)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    twin_nc = OnnxNovelty(onnx_path.parent, args.m, args.beam, args.threads, kv_cache=False)
    twin_c = OnnxNovelty(onnx_path.parent, args.m, args.beam, args.threads, kv_cache=True)
    paths = {  # PyTorch in batches of 64 contexts, as explore novelty precompute and eval run
        ("PyTorch", False): lambda: chunks(lambda s: as_arrays(beam_search(
            lm.next_logprobs, trie, prompts[s], excludes[s], args.m, args.beam, prior), args.m)),
        ("PyTorch", True): lambda: chunks(lambda s: as_arrays(beam_search_cached(
            lm, trie, prompts[s], excludes[s], args.m, args.beam, prior), args.m)),
        ("onnxruntime twin", False): lambda: chunks(lambda s: twin_nc.propose(contexts[s], exclude[s])),
        ("onnxruntime twin", True): lambda: chunks(lambda s: twin_c.propose(contexts[s], exclude[s])),
    }
    with contextlib.ExitStack() as stack:
        if not args.no_triton:
            from streams.infra.triton import EmbeddedTriton

            repos = {True: work / "repo", False: no_cache_repository(work / "repo", work / "repo-nc")}
            for cached, repo in repos.items():
                server = stack.enter_context(EmbeddedTriton(repo, work / f"triton-{cached}"))
                client = TritonNovelty(server.grpc_url, timeout_s=120)
                stack.callback(client.close)
                client.propose(contexts[:2], exclude[:2])
                paths[("Triton (gRPC)", cached)] = (
                    lambda client=client: chunks(lambda s: client.propose(contexts[s], exclude[s])))
        results = interleaved_runs(paths, args.rounds)
    reference = results[("PyTorch", False)][0]
    for name in dict.fromkeys(name for name, _ in paths):
        if name != "PyTorch":
            print(f"{name} (cache) vs PyTorch (no cache): {same(reference, results[(name, True)][0])}")
    print(f"\ntop-{args.m} novel clusters (beam {args.beam}) for {len(contexts)} contexts in batches of 64 "
          f"(median of {args.rounds} interleaved rounds):")
    print(f"  {'':18} {'no cache ctx/s':>15} {'cache ctx/s':>12} {'speed-up':>9}  answers (no cache vs cache)")
    for name in dict.fromkeys(name for name, _ in paths):
        (a_ans, a), (b_ans, b) = results[(name, False)], results[(name, True)]
        print(f"  {name:18} {len(contexts) / a:>15.0f} {len(contexts) / b:>12.0f} {a / b:>8.1f}x  {same(a_ans, b_ans)}")


if __name__ == "__main__":
    main()
