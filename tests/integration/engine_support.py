"""Shared pieces of the engine's integration tests: configs, events, reading topics, checking state."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
from kafka import KafkaConsumer, TopicPartition

from streams.config import EngineConfig
from streams.kafka_security import PLAINTEXT, KafkaSecurity
from streams.wiring.replay import Event, dataset_events


def engine_config(bootstrap: str, seqrec_artifacts, repository: Path, triton_url: str = "",  # type: ignore[no-untyped-def]
                  **overrides: object) -> EngineConfig:
    """A config with topics and app id of its own, so tests never see each other's records."""
    tag = uuid.uuid4().hex[:8]
    values = {"bootstrap": bootstrap, "app_id": f"engine-{tag}", "interactions_topic": f"interactions-{tag}",
              "dlq_topic": f"dlq-{tag}", "recommendations_topic": f"recs-{tag}", "novelty_topic": f"novel-{tag}",
              "feedback_topic": f"feedback-{tag}", "items_topic": f"items-{tag}", "retry_topic": f"retry-{tag}",
              "models_topic": f"sets-{tag}",
              "partitions": 4,
              # An event on an unknown item goes to the DLQ at once (the bad-input tests count it there, by its
              # input offset); the items topic's test sets a wait.
              "unknown_item_wait_s": 0,
              "catalog": str(Path(seqrec_artifacts.checkpoint).parent / "catalog"),
              "repository": str(repository), "triton_url": triton_url, "batch_within_ms": 10,
              "triton_timeout_s": 1.0, "triton_retry_after_s": 1.0, **overrides}
    return EngineConfig().with_values(values)


def synthetic_events(ds, n_users: int, max_per_user: int = 40) -> list[Event]:  # type: ignore[no-untyped-def]
    """The first `max_per_user` interactions of `n_users` users, time-ordered across users."""
    events = [e for e in dataset_events(ds, users=range(n_users)) if int(e.event_id.rsplit("-", 1)[1]) < max_per_user]
    return events


def read_topic(bootstrap: str, topic: str, until: Callable[[list], bool], timeout_s: float = 60.0,
               security: KafkaSecurity = PLAINTEXT) -> list:
    """Records of `topic` from the beginning, until `until(records)` holds or the time is up."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             auto_offset_reset="earliest", fetch_max_wait_ms=200, **security.client_kwargs())
    parts = None
    deadline = time.monotonic() + timeout_s
    while parts is None and time.monotonic() < deadline:
        parts = consumer.partitions_for_topic(topic)
        if parts is None:
            time.sleep(0.2)
    consumer.assign([TopicPartition(topic, p) for p in parts or ()])
    records: list = []
    try:
        while time.monotonic() < deadline and not until(records):
            for batch in consumer.poll(timeout_ms=300).values():
                records.extend(batch)
    finally:
        consumer.close()
    return records


def recommendations(records: list) -> list[dict]:
    return [json.loads(r.value) for r in records]


def check_recommendation(rec: dict, events_by_user: dict[str, list[Event]], item_cluster: dict[str, int],
                         n_clusters: int) -> None:
    """The novel clusters are catalog clusters unknown to the user when the slate was made; the
    items lie in those clusters and were not consumed by the user before it."""
    history = events_by_user[rec["user_id"]][: rec["events_applied"]]
    known = {item_cluster[e.item_id] for e in history}
    consumed = {e.item_id for e in history}
    novel = [c["id"] for c in rec["novel_clusters"]]
    assert novel and all(0 <= c < n_clusters for c in novel), rec
    assert not set(novel) & known, (rec["user_id"], novel, known)
    assert rec["slate"], rec
    for item in rec["slate"]:
        assert item["cluster"] in novel and item_cluster[item["item_id"]] == item["cluster"], (item, novel)
        assert item["item_id"] not in consumed, item


def expected_states(events: list[Event], item_cluster: dict[str, int], k: int) -> dict[str, dict]:
    """What each user's state must be after every event exactly once: count, context, known clusters."""
    out: dict[str, dict] = {}
    for e in events:
        s = out.setdefault(e.user_id, {"n": 0, "context": [], "known": set()})
        c = item_cluster[e.item_id]
        s["n"] += 1
        s["known"].add(c)
        if c in s["context"]:
            s["context"].remove(c)
        s["context"] = [*s["context"], c][-k:]
    return out


def item_cluster_map(seqrec_artifacts) -> dict[str, int]:  # type: ignore[no-untyped-def]
    catalog = seqrec_artifacts.catalog
    return dict(zip(catalog.item_ids, np.asarray(catalog.item_clusters()).tolist(), strict=True))


def metric(text: str, name: str) -> float:
    """The value of the sample `name` (with its labels) in Prometheus text; 0 when absent."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0
