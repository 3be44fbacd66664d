"""Session-scoped real infrastructure for the integration tests.

Every integration test gets a real broker and a real Triton server, started here and stopped at
the end of the session, also when tests fail. Nothing is skipped: a fixture that cannot start
its service fails the tests that need it, with the reason.

- `tansu_bootstrap`: the embedded Tansu broker.
- `apache_bootstrap`: real Apache Kafka (KRaft). `KAFKA_BOOTSTRAP` names an existing cluster to
  use instead; otherwise one is started from jars resolved through Maven (cached outside the repo).
- `apache_cluster`: three Apache Kafka nodes in one KRaft quorum (replication 3), for the tests
  that kill a broker; started when a test asks for it, never from `KAFKA_BOOTSTRAP`.
- `broker`: parametrised over both, for tests that must hold on either.
- `triton`: the embedded tritonserver over a repository with `tiny_linear`, `seqrec` (a small
  SASRec trained here on planted synthetic data) and `interest_generator` (a small novelty LM),
  or the server that `TRITON_URL` names (which must serve `tiny_linear` built with seed 0; the
  seqrec and novelty tests need the models trained here, so leave TRITON_URL unset for them).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class TritonEndpoints:
    grpc: str
    http: str | None
    metrics: str | None
    onnx_path: Path  # the same tiny_linear weights, for in-process reference answers
    repository: Path


@dataclass
class SeqRecArtifacts:
    """A small SASRec on planted data, its catalog, and its export into the test repository."""

    dataset: object
    catalog: object
    checkpoint: Path
    module: object  # interests.seqrec.topn.RestrictedTopN
    onnx_path: Path


@pytest.fixture(scope="session")
def tansu_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from streams.infra.tansu import EmbeddedKafka

    with EmbeddedKafka(tmp_path_factory.mktemp("tansu")) as kafka:
        yield kafka.bootstrap


@pytest.fixture(scope="session")
def apache_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    from streams.infra.apache_kafka import ApacheKafka

    with ApacheKafka(tmp_path_factory.mktemp("apache-kafka")) as kafka:
        yield kafka.bootstrap


@pytest.fixture(scope="module")
def apache_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A 3-node Apache Kafka cluster (`streams.infra.apache_kafka.KafkaCluster`): tests kill and restart its
    nodes, so it is always one started here, whatever KAFKA_BOOTSTRAP says. Per module: idle, its three
    brokers take 16-24 % of a core, which a session-wide cluster took from every test after its own."""
    from streams.infra.apache_kafka import KafkaCluster

    with KafkaCluster(tmp_path_factory.mktemp("apache-cluster"), nodes=3) as cluster:
        yield cluster


@pytest.fixture(params=["tansu", "apache"])
def broker(request: pytest.FixtureRequest) -> str:
    """The bootstrap address of each real broker in turn."""
    return request.getfixturevalue(f"{request.param}_bootstrap")


@pytest.fixture(scope="session")
def tiny_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from exporters.repository import write_tiny_repository

    return write_tiny_repository(tmp_path_factory.mktemp("model_repository"))


@pytest.fixture(scope="session")
def seqrec_artifacts(tmp_path_factory: pytest.TempPathFactory, tiny_repository: Path) -> SeqRecArtifacts:
    """Train a small SASRec on planted synthetic data and export it next to tiny_linear."""
    from exporters.seqrec_export import export_seqrec, restricted_model
    from interests.clusters.build import BuildConfig, build_catalog
    from interests.data.splits import leave_one_out, pad_left
    from interests.data.synthetic import make_synthetic
    from interests.seqrec.train import TrainConfig, train

    work = tmp_path_factory.mktemp("seqrec")
    ds, _ = make_synthetic(n_clusters=6, items_per_cluster=20, n_users=200, seed=4)
    catalog = build_catalog(ds, BuildConfig(levels=(3, 6)), progress=False)
    catalog.save(work / "catalog")
    split = leave_one_out(ds)
    cfg = TrainConfig(max_len=20, dim=32, heads=2, blocks=1, lr=5e-3, epochs=6, patience=6, seed=0)
    train(split, cfg, progress=False, checkpoint=work / "model.pt",
          extra={"catalog_version": catalog.version, "sample_histories": pad_left(split.test_history[:16], 20)})
    result = export_seqrec(work / "model.pt", work / "catalog", tiny_repository, top_n=10)
    assert result.parity.ok(), result.parity
    module, _ = restricted_model(work / "model.pt", catalog, top_n=10, level=None)
    return SeqRecArtifacts(ds, catalog, work / "model.pt", module, result.onnx_path)


@dataclass
class NoveltyArtifacts:
    """A small novelty LM on planted data, exported as `interest_generator` into the test repository."""

    lm: object  # interests.novelty.lm.NoveltyLM
    split: object  # interests.novelty.examples.TimeSplit
    model_dir: Path  # repo/interest_generator/1


@pytest.fixture(scope="session")
def novelty_artifacts(seqrec_artifacts: SeqRecArtifacts, tiny_repository: Path) -> NoveltyArtifacts:
    from exporters.novelty_onnx import export_generator
    from interests.novelty.examples import novel_transitions, split_by_time
    from interests.novelty.lm import LMConfig, train_novelty_lm

    catalog = seqrec_artifacts.catalog
    split = split_by_time(novel_transitions(seqrec_artifacts.dataset, catalog.item_clusters(), 2))
    lm, _ = train_novelty_lm(catalog.descriptions(), split.train, split.valid,
                             LMConfig(layers=1, dim=48, heads=2, epochs=4, patience=4),
                             {"catalog_version": catalog.version, "k": 2, "level": catalog.finest}, progress=False)
    onnx_path = export_generator(lm, tiny_repository)
    return NoveltyArtifacts(lm, split, onnx_path.parent)


@dataclass
class MixtureArtifacts:
    """The test repository again, with `explorer`: a hand-weighted mixture level (random cluster head on the
    test SASRec, the context experts of the planted data, the test LM's table rows as its LM expert)."""

    repository: Path  # a copy of the test repository, plus explorer/
    level_dir: Path  # the level it was exported from (mixture.json, cluster_head.pt, context and item experts)


@pytest.fixture(scope="session")
def mixture_artifacts(tmp_path_factory: pytest.TempPathFactory, tiny_repository: Path,
                      seqrec_artifacts: SeqRecArtifacts, novelty_artifacts: NoveltyArtifacts) -> MixtureArtifacts:
    import shutil

    import torch

    from exporters.mixture_export import export_mixture
    from interests.novelty.cluster_head import ClusterHead
    from interests.novelty.fit_mixture import context_experts, period_item_experts, save_level
    from interests.novelty.mixture import Mixture
    from interests.seqrec.train import load_checkpoint

    work = tmp_path_factory.mktemp("mixture")
    repository = work / "repository"
    shutil.copytree(tiny_repository, repository)
    catalog, level = seqrec_artifacts.catalog, seqrec_artifacts.catalog.finest
    ic, n = catalog.item_clusters(level), catalog.levels[level]
    torch.manual_seed(0)
    head = ClusterHead(load_checkpoint(seqrec_artifacts.checkpoint)[0].cfg.dim, n, 4).double()
    torch.nn.init.normal_(head.weight, std=0.3)
    level_dir = save_level(
        work / "level", Mixture({"lm": 0.3, "sequence": 1.0, "cooccurrence": 0.5, "popularity": 0.2,
                                 "transitions": 0.4, "ease": 0.2}, level,
                                {"sequence": "head", "catalog_version": catalog.version,
                                 "seqrec": [str(seqrec_artifacts.checkpoint)]}),
        context_experts(seqrec_artifacts.dataset, ic, n, novelty_artifacts.split, novelty_artifacts.lm,
                        period_item_experts(seqrec_artifacts.dataset, ic, novelty_artifacts.split.train,
                                            novelty_artifacts.split.cut_test)), head,
        {"level": level, "seqrec": str(seqrec_artifacts.checkpoint)})
    result = export_mixture(level_dir, Path(seqrec_artifacts.checkpoint).parent / "catalog", repository, m=3,
                            top_n=10)
    assert result.parity.ok(), result.parity
    return MixtureArtifacts(repository, level_dir)


@pytest.fixture(scope="session")
def triton(tmp_path_factory: pytest.TempPathFactory, tiny_repository: Path,
           seqrec_artifacts: SeqRecArtifacts, novelty_artifacts: NoveltyArtifacts) -> Iterator[TritonEndpoints]:
    from streams.infra.stack import external_triton

    onnx_path = tiny_repository / "tiny_linear" / "1" / "model.onnx"
    ext = external_triton()
    if ext:
        yield TritonEndpoints(ext[0], ext[1], ext[2], onnx_path, tiny_repository)
        return
    from streams.infra.triton import EmbeddedTriton

    with EmbeddedTriton(tiny_repository, tmp_path_factory.mktemp("triton")) as server:
        yield TritonEndpoints(server.grpc_url, server.http_url, server.metrics_url, onnx_path, tiny_repository)
