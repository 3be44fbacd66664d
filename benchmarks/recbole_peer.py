"""SASRec here against RecBole's SASRec on the same split and protocol, side by side in one run.

The data set is written as RecBole atomic files in our order (users, then time, ties in file
order), with the position as the timestamp, so RecBole's leave-one-out split ("LS",
valid_and_test, order TO) holds out exactly our validation and test items. Both rank all items,
seen ones included (RecBole does so for sequential models), and report HR/NDCG/MRR@10 on test.

RecBole runs in its own virtualenv (never a dependency of this project), created by --setup with
the pins that work here (numpy 1.26, pandas 2.2; see the project notes): its SASRec trains on
every prefix of every history, which costs minutes per epoch on this machine, so --recbole-epochs
bounds it and the table says whether it stopped early or was cut off.

Run: python benchmarks/recbole_peer.py --setup
     python benchmarks/recbole_peer.py --data data/ml-latest-small --recbole-epochs 8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from interests.data.loaders import load_dataset
from interests.data.splits import leave_one_out, popularity_ranks, ranking_metrics
from interests.seqrec.train import TrainConfig, evaluate, train

VENV = Path.home() / ".cache" / "interest-explorer" / "recbole-venv"
PINS = ["recbole==1.2.1", "numpy==1.26.4", "pandas==2.2.3", "torch==2.15.0", "scipy<1.14"]
RUNNER = Path(__file__).with_name("recbole_runner.py")


def setup() -> None:
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(VENV / "bin" / "pip"), "install", "--quiet", *PINS], check=True)
    print(f"RecBole virtualenv ready: {VENV}")


def write_atomic(ds, directory: Path, name: str) -> Path:  # type: ignore[no-untyped-def]
    """`name.inter` with our order as the timestamp (exact in float32 below 2**24 rows)."""
    path = directory / name
    path.mkdir(parents=True, exist_ok=True)
    with open(path / f"{name}.inter", "w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for pos, (u, i) in enumerate(zip(ds.users, ds.items, strict=True)):
            f.write(f"u{u}\ti{i + 1}\t{pos}\n")
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setup", action="store_true", help="create RecBole's virtualenv and exit")
    parser.add_argument("--data", type=Path, default=Path("data/ml-latest-small"))
    parser.add_argument("--recbole-epochs", type=int, default=8, help="upper bound on RecBole's epochs")
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.setup:
        setup()
        return
    python = VENV / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"error: no RecBole virtualenv at {VENV}; run this script with --setup first")
    ds = load_dataset(args.data)
    split = leave_one_out(ds)
    print(f"{ds.summary()}\nprotocol: {split.protocol()}\n")

    work = Path(tempfile.mkdtemp(prefix="recbole-peer-"))
    write_atomic(ds, work, "peer")
    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "OMP_NUM_THREADS": str(args.threads)}
    t0 = time.perf_counter()
    # cwd=work: RecBole writes its logs and tensorboard files into the working directory.
    argv = [str(python), str(RUNNER.resolve()), str(work), "peer", str(args.recbole_epochs), str(args.max_len),
            str(args.threads)]
    proc = subprocess.run(argv, env=env, cwd=work, capture_output=True, text=True, check=False)
    recbole_s = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"RecBole failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    peer = json.loads(proc.stdout.strip().splitlines()[-1])

    cfg = TrainConfig(max_len=args.max_len, threads=args.threads)
    model, result = train(split, cfg, progress=False)
    ours = evaluate(model, split.test_history, split.test_target)
    pop = ranking_metrics(popularity_ranks(split))

    print(f"{'model':34} {'HR@10':>8} {'NDCG@10':>8} {'MRR@10':>8} {'epochs':>8} {'train s':>8}")
    print(f"{'popularity':34} {pop['HR@10']:>8.4f} {pop['NDCG@10']:>8.4f} {pop['MRR@10']:>8.4f} {'-':>8} {'-':>8}")
    print(f"{'SASRec (this project)':34} {ours['HR@10']:>8.4f} {ours['NDCG@10']:>8.4f} {ours['MRR@10']:>8.4f} "
          f"{result.best_epoch:>4}/{len(result.history):<3} {result.seconds:>8.0f}")
    stopped = "early-stopped" if peer["epochs_run"] < args.recbole_epochs else "cut off, not converged"
    print(f"{'SASRec (RecBole 1.2.1, ' + stopped + ')':34} {peer['hit@10']:>8.4f} {peer['ndcg@10']:>8.4f} "
          f"{peer['mrr@10']:>8.4f} {peer['best_epoch']:>4}/{peer['epochs_run']:<3} {recbole_s:>8.0f}")
    print(f"\nRecBole's valid NDCG@10 by epoch: {peer['valid_ndcg']}")


if __name__ == "__main__":
    main()
