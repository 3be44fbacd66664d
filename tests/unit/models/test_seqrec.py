"""SASRec: split, metrics, training, the restricted top-N and its ONNX export (no Triton here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from exporters.seqrec_onnx import check_parity, export_onnx, random_inputs
from interests.clusters.build import BuildConfig, build_catalog
from interests.data.splits import (
    held_out_start,
    leave_one_out,
    pad_left,
    popularity_ranks,
    ranking_metrics,
    ranks_of,
    training_period,
    training_windows,
)
from interests.data.synthetic import make_synthetic
from interests.seqrec.sasrec import SASRec, SASRecConfig
from interests.seqrec.topn import EXCLUDED, RestrictedTopN
from interests.seqrec.train import TrainConfig, evaluate, load_checkpoint, train

SMALL = TrainConfig(max_len=20, dim=32, heads=2, blocks=1, dropout=0.1, lr=5e-3, batch_size=64, epochs=12,
                    patience=4, seed=0)


@pytest.fixture(scope="module")
def data():
    ds, truth = make_synthetic(n_clusters=6, items_per_cluster=15, n_users=300, min_len=15, max_len=40, seed=2)
    return ds, truth, leave_one_out(ds)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    _, _, split = data
    path = tmp_path_factory.mktemp("seqrec") / "model.pt"
    model, result = train(split, SMALL, progress=False, checkpoint=path, extra={"catalog_version": "abc"})
    return model, result, path


def test_leave_one_out_holds_out_the_last_two(data) -> None:
    ds, _, split = data
    seqs = ds.sequences()
    u = int(split.valid_users[0])
    s = seqs[u] + 1
    assert split.test_target[0] == s[-1] and split.valid_target[0] == s[-2]
    assert np.array_equal(split.train[u], s[:-2]) and np.array_equal(split.test_history[0], s[:-1])
    assert "leave-one-out" in split.protocol() and "all" in split.protocol()


def test_the_held_out_share_of_time_is_cut_where_every_command_cuts_it(data) -> None:
    ds, _, _ = data
    start = held_out_start(ds, 0.2)
    train_ds = training_period(ds, start)
    assert train_ds.n_interactions == int((ds.timestamps < start).sum())
    assert abs(train_ds.n_interactions / ds.n_interactions - 0.8) < 0.02  # ties at the quantile move it a little
    for share in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="share of time"):
            held_out_start(ds, share)


def test_training_windows_target_each_position_once() -> None:
    train_seqs = [np.arange(1, 31), np.array([5, 6]), np.array([7])]
    x, y = training_windows(train_seqs, max_len=8)
    targets = y[y > 0]
    assert sorted(targets.tolist()) == sorted([*range(2, 31), 6])
    for row_x, row_y in zip(x, y, strict=True):  # the target is the item after the input
        real = row_y > 0
        assert np.all(row_y[real][:-1] == row_x[real][1:])


def test_metrics_by_hand() -> None:
    m = ranking_metrics(np.array([1, 2, 11, 5]), k=10)
    assert m["HR@10"] == pytest.approx(3 / 4)
    assert m["NDCG@10"] == pytest.approx((1 + 1 / np.log2(3) + 1 / np.log2(6)) / 4)
    assert m["MRR@10"] == pytest.approx((1 + 1 / 2 + 1 / 5) / 4)
    scores = np.array([[0.1, 0.5, 0.5, 0.9]])
    assert ranks_of(scores, np.array([2])).tolist() == [3]  # ties count against the target


def test_sasrec_learns_the_planted_transitions(data, trained) -> None:
    _, _, split = data
    model, result, _ = trained
    test = evaluate(model, split.test_history, split.test_target)
    pop = ranking_metrics(popularity_ranks(split))
    assert test["NDCG@10"] > 1.5 * pop["NDCG@10"], (test, pop)
    assert result.best_epoch >= 1 and result.history[0]["loss"] > result.history[result.best_epoch - 1]["loss"]


def test_training_is_deterministic_by_seed(data) -> None:
    _, _, split = data
    cfg = TrainConfig(**{**vars(SMALL), "epochs": 2, "patience": 2})
    a = train(split, cfg, progress=False)[1].history
    b = train(split, cfg, progress=False)[1].history
    assert [h["loss"] for h in a] == [h["loss"] for h in b]


def test_sampled_negative_loss_trains(data) -> None:
    _, _, split = data
    cfg = TrainConfig(**{**vars(SMALL), "epochs": 3, "patience": 3, "loss": "bce"})
    _, result = train(split, cfg, progress=False)
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_checkpoint_round_trip_records_the_catalog(trained, data) -> None:
    model, _, path = trained
    back, ckpt = load_checkpoint(path)
    assert ckpt["catalog_version"] == "abc" and ckpt["best_epoch"] >= 1
    x = torch.from_numpy(pad_left(data[2].test_history[:5], SMALL.max_len))
    torch.testing.assert_close(back.last_scores(x), model.last_scores(x))


def test_left_padding_and_shorter_histories_agree() -> None:
    """Positions count back from the newest item, so padding never changes the answer."""
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(n_items=30, max_len=12, dim=16, heads=2, blocks=2, dropout=0.0)).eval()
    short = torch.tensor([[3, 9, 4, 17]])
    padded = torch.tensor([[0] * 8 + [3, 9, 4, 17]])
    with torch.no_grad():
        torch.testing.assert_close(model.last_scores(short), model.last_scores(padded), atol=1e-5, rtol=1e-5)


def _restricted(n_items: int, n_clusters: int, top_n: int, seed: int) -> RestrictedTopN:
    torch.manual_seed(seed)
    model = SASRec(SASRecConfig(n_items=n_items, max_len=10, dim=16, heads=2, blocks=1, dropout=0.0)).eval()
    item_cluster = torch.from_numpy(np.random.default_rng(seed).integers(0, n_clusters, n_items))
    return RestrictedTopN(model, item_cluster, n_clusters, top_n).eval()


def _check_restriction(module: RestrictedTopN, history: np.ndarray, allowed: np.ndarray,
                       items: np.ndarray, scores: np.ndarray) -> None:
    cluster_of = module.item_cluster.numpy()
    for row in range(len(history)):
        eligible = {i + 1 for i in range(module.model.cfg.n_items)
                    if allowed[row, cluster_of[i]] and (i + 1) not in set(history[row].tolist())}
        got = [int(i) for i, s in zip(items[row], scores[row], strict=True) if s > EXCLUDED / 2]
        assert set(got) <= eligible, "an item outside the allowed clusters or already consumed"
        assert len(got) == min(len(eligible), module.top_n), "eligible items were left out"
        assert len(set(got)) == len(got)


@settings(max_examples=40, deadline=None)
@given(n_items=st.integers(5, 60), n_clusters=st.integers(1, 8), top_n=st.integers(1, 12), batch=st.integers(1, 5),
       seed=st.integers(0, 10_000))
def test_restricted_top_n_only_returns_eligible_items(n_items: int, n_clusters: int, top_n: int, batch: int,
                                                     seed: int) -> None:
    module = _restricted(n_items, n_clusters, top_n, seed)
    history, allowed = random_inputs(n_items, n_clusters, batch, 10, np.random.default_rng(seed))
    with torch.no_grad():
        items, scores = (t.numpy() for t in module(torch.from_numpy(history), torch.from_numpy(allowed)))
    assert items.shape == scores.shape == (batch, module.top_n)
    _check_restriction(module, history, allowed, items, scores)


def test_onnx_export_matches_pytorch(tmp_path: Path, data, trained) -> None:
    ds, _, split = data
    model, _, _ = trained
    catalog = build_catalog(ds, BuildConfig(levels=(6,)), progress=False)
    module = RestrictedTopN(model, torch.from_numpy(catalog.item_clusters().astype(np.int64)), 6, top_n=10)
    path = export_onnx(module, tmp_path / "seqrec.onnx")
    rng = np.random.default_rng(0)
    real = pad_left(split.test_history[:32], SMALL.max_len)
    cases = [random_inputs(ds.n_items, 6, b, length, rng) for b, length in ((1, 20), (9, 20), (4, 3), (64, 20))]
    cases += [(real, np.ones((32, 6), bool)), (real, random_inputs(ds.n_items, 6, 32, 1, rng)[1])]
    parity = check_parity(module, path, cases)
    assert parity.ok(), parity
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for history, allowed in cases:
        items, scores = session.run(["items", "scores"], {"history": history, "allowed": allowed})
        _check_restriction(module, history, allowed, items, scores)


def test_serving_sessions_do_not_spin_unless_asked(tmp_path: Path, data, trained) -> None:
    """onnxruntime's pool threads spin after every call unless told not to: 2-4x the CPU at a call per batch
    (`benchmarks/onnx_spinning.py`, `engine_throughput.py --spinning`). The worker's twin is built with it off
    through `onnx_session` (which the generator's sessions share), and the committed Triton configs keep it off."""
    from exporters.repository import source_dir
    from interests.runtime.constrained import SPINNING
    from streams.inference.seqrec import OnnxSeqRec

    ds, _, _ = data
    model, _, _ = trained
    catalog = build_catalog(ds, BuildConfig(levels=(6,)), progress=False)
    path = export_onnx(RestrictedTopN(model, torch.from_numpy(catalog.item_clusters().astype(np.int64)), 6, 10),
                       tmp_path / "seqrec.onnx")
    for twin, expected in ((OnnxSeqRec(path), "0"), (OnnxSeqRec(path, spinning=True), "1")):
        assert twin.session.get_session_options().get_session_config_entry(SPINNING) == expected
    for name in ("seqrec", "interest_generator"):
        config = (source_dir() / name / "config.pbtxt").read_text()
        assert 'key: "intra_op_spinning", value: { string_value: "false" }' in config, name
        assert '"intra_op_spinning"' in (source_dir() / name / "1" / "model.py").read_text(), name


def test_cli_train_eval_export(tmp_path: Path) -> None:
    import subprocess
    import sys

    def explore(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "explore", *args], capture_output=True, text=True, check=False)

    data = ["--synthetic", "--synthetic-clusters", "4", "--synthetic-users", "120"]
    assert explore("clusters", "build", *data, "--levels", "2,4", "--out", str(tmp_path / "cat"), "--quiet"
                   ).returncode == 0
    trained = explore("seqrec", "train", *data, "--catalog", str(tmp_path / "cat"), "--out", str(tmp_path / "m.pt"),
                      "--epochs", "2", "--max-len", "16", "--dim", "16", "--blocks", "1", "--quiet")
    assert trained.returncode == 0, trained.stderr
    assert "leave-one-out" in trained.stdout and "popularity (test)" in trained.stdout
    assert (tmp_path / "m.json").is_file()
    evaluated = explore("seqrec", "eval", *data, "--checkpoint", str(tmp_path / "m.pt"))
    assert evaluated.returncode == 0 and "SASRec (test)" in evaluated.stdout, evaluated.stderr
    exported = explore("seqrec", "export", "--checkpoint", str(tmp_path / "m.pt"), "--catalog", str(tmp_path / "cat"),
                       "--repository", str(tmp_path / "repo"), "--top-n", "5")
    assert exported.returncode == 0, exported.stdout + exported.stderr
    assert "top-N ids identical" in exported.stdout
    assert (tmp_path / "repo" / "seqrec" / "1" / "model.onnx").is_file()
    assert (tmp_path / "repo" / "seqrec" / "config.pbtxt").is_file()
    other = explore("clusters", "build", *data, "--levels", "2,4", "--seed", "1", "--out", str(tmp_path / "cat2"),
                    "--quiet")
    assert other.returncode == 0
    refused = explore("seqrec", "export", "--checkpoint", str(tmp_path / "m.pt"), "--catalog", str(tmp_path / "cat2"),
                      "--repository", str(tmp_path / "repo2"))
    assert refused.returncode == 1 and "trained with catalog" in refused.stderr


def test_tensorrt_check_says_what_it_needs_without_a_gpu(tmp_path: Path, trained) -> None:
    from exporters.seqrec_onnx import check_tensorrt, tensorrt_available

    model, _, _ = trained
    module = RestrictedTopN(model, torch.zeros(model.cfg.n_items, dtype=torch.long), 1, top_n=5)
    path = export_onnx(module, tmp_path / "m.onnx")
    if tensorrt_available():  # a GPU machine with the gpu extra: the real check
        assert check_tensorrt(module, path, [random_inputs(model.cfg.n_items, 1, 8, 20, np.random.default_rng(0))])
    else:
        with pytest.raises(RuntimeError, match="TensorrtExecutionProvider"):
            check_tensorrt(module, path, [])


class _Payload:
    """Stands for an arbitrary pickled object; unpickling one would run code of the file's choosing."""


def test_loading_a_checkpoint_never_unpickles_objects(tmp_path: Path, trained) -> None:
    """Issue 13 item 7: checkpoints load weights only; a file holding an object is refused with a clear error."""
    import torch

    from interests.seqrec.train import load_checkpoint

    path = tmp_path / "evil.pt"
    torch.save({**torch.load(trained[2], weights_only=True), "payload": _Payload()}, path)
    with pytest.raises(ValueError, match="not a plain checkpoint"):
        load_checkpoint(path)
