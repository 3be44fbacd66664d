"""The pretrained novelty LM's one GPU run (issue 12): every number the judge needs, in one short run.

A CPU affords SmolLM2-135M's zero-shot use and a LoRA fine-tune on a few hundred examples; a lent GPU
affords all of that exactly (every validation and test context, no sampling) and a LoRA fine-tune on
every training example, in minutes. This script does it in priority order under a time budget, so
that whatever the budget leaves out is said, never half-done, and the results so far are always packed:

 1. the base model (`explore novelty base-model smollm2-135m`);
 2. per level (32 and 128 clusters of the catalog): zero-shot, and LoRA on the CPU budget (448
    examples x at most 3 epochs: ~28 min of training on 2 cores at the ~1.25 s per example measured
    there), each with its score rule and popularity prior chosen on validation;
 3. the judge: every baseline, SASRec explores, the from-scratch LMs given with --scratch, and the
    models above, on every test moment (text similarity is left out: MiniLM does not travel);
 4. LoRA on every capped training example, its training time bounded by what is left, and the
    judge again for those models (the first run of this script put this stage before the judge and
    spent the judge's time on it: the core numbers now come first);
 5. speed and parity: exact scoring and precompute (the table's beam search) contexts/s on the GPU
    and the CPU of the same machine, the largest |difference| of their scores, equal table rows.

usage (repository root, a CUDA device visible):
  python scripts/gpu_pretrained.py --out DIR --catalog runs/judge/catalog --seqrec runs/judge/seqrec/model.pt \
      --scratch runs/judge/novelty-l1 --scratch runs/judge/novelty-l2 [--budget-s 480]

Writes DIR/log.txt, DIR/results.tar.gz (model deltas without the base's tokenizer files, judge
outputs, speed.json) and DIR/summary.json. `--smoke` runs every stage tiny, for a check on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LEVELS = (1, 2)  # 32 and 128 clusters in the judge's catalog (levels 8/32/128/256)
CPU_BUDGET = {"max_train_examples": 448, "epochs": 3, "batch_size": 16, "max_valid_examples": 256}


class Run:
    """Subprocess stages under one deadline, logged to DIR/log.txt and summarised in summary.json."""

    def __init__(self, out: Path, budget_s: float, device: str) -> None:
        self.out, self.deadline, self.device = out, time.monotonic() + budget_s, device
        self.log_file = (out / "log.txt").open("a")
        self.summary: dict = {"stages": []}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def log(self, line: str) -> None:
        print(line, flush=True)
        self.log_file.write(line + "\n")
        self.log_file.flush()

    def explore(self, name: str, args: list[str], need_s: float) -> bool:
        """`python -m explore ARGS` if at least `need_s` seconds are left; False when skipped or failed."""
        if self.left() < need_s:
            self.log(f"== {name}: skipped ({self.left():.0f} s left, needs ~{need_s:.0f})")
            self.summary["stages"].append({"stage": name, "status": "skipped"})
            return False
        self.log(f"== {name}: explore {' '.join(args)}")
        t0 = time.monotonic()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}
        try:
            proc = subprocess.run([sys.executable, "-m", "explore", *args], cwd=ROOT, env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=max(10.0, self.left()))
            status, output = ("ok" if proc.returncode == 0 else f"exit {proc.returncode}"), proc.stdout
        except subprocess.TimeoutExpired as e:
            status, output = "timed out", (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else e.stdout or ""
        secs = time.monotonic() - t0
        self.log(output.rstrip())
        self.log(f"== {name}: {status} in {secs:.0f} s")
        self.summary["stages"].append({"stage": name, "status": status, "seconds": round(secs, 1)})
        return status == "ok"


def data_args(args: argparse.Namespace) -> list[str]:
    return ["--data", str(args.data), "--catalog", str(args.catalog)]


def train_stage(run: Run, args: argparse.Namespace, level: int, kind: str, need_s: float,
                extra: list[str]) -> Path | None:
    out = args.out / "models" / f"{kind}-l{level}"
    common = [*data_args(args), "--level", str(level), "--base-model", "smollm2-135m", "--score", "auto",
              "--delta", "--device", run.device, "--out", str(out), "--quiet"]
    if args.smoke:
        common += ["--prior-max-moments", "12"]
    return out if run.explore(f"{kind} level {level}", ["novelty", "train", *common, *extra], need_s) else None


def budget_args(smoke: bool) -> list[str]:
    b = dict(CPU_BUDGET, **({"max_train_examples": 8, "epochs": 1, "max_valid_examples": 8} if smoke else {}))
    return ["--lora", "--lr", "1e-3", *(f"--{k.replace('_', '-')}={v}" for k, v in b.items()), "--patience", "1"]


def full_args(seconds: float, smoke: bool) -> list[str]:
    cap = ["--max-train-examples", "12", "--max-valid-examples", "8"] if smoke else []
    return ["--lora", "--lr", "1e-3", "--batch-size", "32", "--epochs", "4", "--patience", "1",
            "--max-train-seconds", f"{seconds:.0f}", *cap]


def speed_stage(run: Run, args: argparse.Namespace, model_dir: Path) -> None:
    """Contexts/s of exact scoring and of the table's beam search, GPU and CPU, and their parity."""
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT))
    from interests.novelty.lm import NoveltyLM
    from interests.novelty.precompute import precompute, table_depth

    out: dict = {"model": model_dir.name}
    gpu = NoveltyLM.load(model_dir, run.device)
    n, k = len(gpu.descriptions), gpu.meta["k"]
    rng = np.random.default_rng(0)
    contexts = np.stack([rng.permutation(n)[:k] for _ in range(8 if args.smoke else 512)])
    top = table_depth(n, k)

    def timed(fn):  # type: ignore[no-untyped-def]
        if run.device != "cpu":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        value = fn()
        return value, time.perf_counter() - t0

    few = contexts[:32]
    table_gpu, secs = timed(lambda: gpu.description_table(contexts))
    out["exact_contexts_per_s_gpu"] = len(contexts) / secs
    rows_gpu, secs = timed(lambda: precompute(gpu, few.tolist(), top, top, progress=False))
    out["precompute_contexts_per_s_gpu_32"] = len(few) / secs
    _, secs = timed(lambda: precompute(gpu, contexts.tolist(), top, top, progress=False))
    out[f"precompute_contexts_per_s_gpu_{len(contexts)}"] = len(contexts) / secs
    cpu = NoveltyLM.load(model_dir, "cpu")
    for threads, count in ((torch.get_num_threads(), 4), (2, 2)):  # a 2-core machine's figure, and this one's
        torch.set_num_threads(threads)
        table_cpu, secs = timed(lambda: cpu.description_table(contexts[:count]))  # noqa: B023
        out[f"exact_contexts_per_s_cpu_{threads}_threads"] = count / secs
        rows_cpu, secs = timed(lambda: precompute(cpu, contexts[:count].tolist(), top, top, progress=False))  # noqa: B023
        out[f"precompute_contexts_per_s_cpu_{threads}_threads"] = count / secs
        if threads != 2:
            finite = np.isfinite(table_cpu)
            out["exact_max_abs_diff_gpu_cpu"] = float(np.abs(table_gpu[:count][finite] - table_cpu[finite]).max())
            pairs = list(zip(rows_gpu, rows_cpu, strict=False))  # the GPU rows cover more contexts
            out["table_rows_equal_gpu_cpu"] = f"{sum(a['clusters'] == b['clusters'] for a, b in pairs)}/{len(pairs)}"
            out["table_max_abs_score_diff"] = max(abs(x - y) for a, b in pairs
                                                  for x, y in zip(a["scores"], b["scores"], strict=True))
    out["device_name"] = torch.cuda.get_device_name() if run.device != "cpu" else "cpu"
    out["cpu_threads"] = os.cpu_count()
    (args.out / "speed.json").write_text(json.dumps(out, indent=1))
    run.log("speed: " + json.dumps(out))


def judge_stage(run: Run, args: argparse.Namespace, name: str, models: list[Path], levels: tuple | list) -> None:
    """The judge on every test moment of `levels` (the baselines are recomputed: they cost seconds)."""
    out = args.out / ("judge" if name == "judge" else "judge-full")
    judge = ["novelty", "eval", *data_args(args), "--text", "none", "--device", run.device,
             "--levels", ",".join(map(str, levels)), "--out", str(out)]
    judge += [a for m in models for a in ("--model", str(m))]
    judge += ["--seqrec", str(args.seqrec)] if args.seqrec else []
    judge += ["--max-contexts", "6"] if args.smoke else []
    run.explore(name, judge, 0)


def pack(args: argparse.Namespace, run: Run) -> None:
    """results.tar.gz: everything under DIR but the base model's tokenizer files (the same here)."""
    with tarfile.open(args.out / "results.tar.gz", "w:gz") as tar:
        for path in sorted(args.out.rglob("*")):
            if path.is_file() and path.name not in ("tokenizer.json", "results.tar.gz", "log.txt"):
                tar.add(path, arcname=str(path.relative_to(args.out)))
    (args.out / "summary.json").write_text(json.dumps(run.summary, indent=1))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--data", type=Path, default=ROOT / "data" / "ml-latest-small")
    p.add_argument("--catalog", type=Path, default=ROOT / "runs" / "judge" / "catalog")
    p.add_argument("--seqrec", type=Path, default=None)
    p.add_argument("--scratch", type=Path, action="append", default=[], help="from-scratch LM directories to judge")
    p.add_argument("--budget-s", type=float, default=480.0, help="the whole run's time budget")
    p.add_argument("--device", default="cuda")
    p.add_argument("--smoke", action="store_true", help="every stage tiny (a check on a CPU)")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("EXPLORE_HOME", "/tmp/explore-home")  # the converted base model: not in DIR
    run = Run(args.out, args.budget_s, args.device)
    try:
        run.explore("base model", ["novelty", "base-model", "smollm2-135m"], 0)
        models: list[Path] = []
        for level in LEVELS[:1] if args.smoke else LEVELS:
            models += filter(None, [train_stage(run, args, level, "zero-shot", 60, ["--zero-shot"]),
                                    train_stage(run, args, level, "lora-budget", 90, budget_args(args.smoke))])
        levels = LEVELS[:1] if args.smoke else LEVELS
        judge_stage(run, args, "judge", [*args.scratch, *models], levels)  # the core numbers first
        # What is left goes to LoRA on every example (its time bounded; choosing its prior on every
        # validation moment costs as much again as judging it: ~100 s per model at 128 clusters on
        # an H200, measured) and to judging those models.
        full: list[Path] = []
        for level, cost in zip(levels, (15.0, 110.0), strict=False):  # the prior's + the judge's cost
            seconds = min(120.0, run.left() - 2 * cost - 90 - (110 if level == 1 and not args.smoke else 0))
            full += filter(None, [train_stage(run, args, level, "lora-full", max(seconds, 10) + cost + 40,
                                              full_args(max(seconds, 10), args.smoke))])
        if full:
            judge_stage(run, args, "judge (LoRA on every example)", full, sorted({int(m.name[-1]) for m in full}))
        models += full
        best = next((m for m in reversed(models) if "l2" in m.name or args.smoke), None)
        if best is not None and run.left() > 20:
            try:
                speed_stage(run, args, best)
            except Exception as e:  # a failed measurement is reported, the results still packed
                run.log(f"speed: failed: {type(e).__name__}: {e}")
    finally:
        pack(args, run)
        run.log(f"== done, {run.left():.0f} s of the budget left")
    return 0


if __name__ == "__main__":
    sys.exit(main())
