"""The engine's Prometheus metrics, in their own registry (one per worker app).

Names follow Prometheus conventions: an `explore_` prefix, base units (seconds), `_total` on
counters. The share of slate items from novel clusters is
`explore_slate_novel_items_total / explore_slate_items_total`; the table hit rate is
`explore_novelty_table_lookups_total{result="hit"}` over all lookups (both counted per user). The
acceptance rate of proposed clusters by source and rank is
`explore_feedback_total{outcome="accepted"}` over the `accepted` and `horizon` outcomes together
(`evicted` ones never reached their horizon: no label).
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
INFER_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.events = Counter("explore_events", "Input records by outcome: applied, duplicate (already in the "
                              "state), invalid (sent to the DLQ), waiting (its item is not published yet: sent to "
                              "the retry topic), revoked (partition moved to another worker; its next owner "
                              "handles the record)",
                              ["outcome"], registry=r)
        self.dlq = Counter("explore_dlq_records", "Records sent to the dead-letter topic, by reason", ["reason"],
                           registry=r)
        self.slates = Counter("explore_slates", "Recommendations sent, by where the novel clusters came from "
                              "(mixture: the explorer model; table or live: the LM's)", ["source"], registry=r)
        self.no_slate = Counter("explore_slates_skipped", "Context changes without a slate, by reason "
                                "(no_novel_cluster: the user knows every cluster; no_items: nothing eligible; "
                                "error: a model call "
                                "failed on both paths, logged; the next event retries)",
                                ["reason"], registry=r)
        self.latency = Histogram("explore_event_to_slate_seconds", "Kafka timestamp of the triggering event to "
                                 "the slate being sent", buckets=LATENCY_BUCKETS, registry=r)
        self.inference = Histogram("explore_inference_seconds", "Model call latency by model and path "
                                   "(triton or onnx fallback)", ["model", "path"], buckets=INFER_BUCKETS, registry=r)
        self.inference_errors = Counter("explore_inference_errors", "Failed Triton calls (retried, then "
                                        "served by the fallback)", ["model"], registry=r)
        self.triton_up = Gauge("explore_triton_up", "1 while the worker uses Triton, 0 while on the "
                               "in-process fallback", registry=r)
        self.table_lookups = Counter("explore_novelty_table_lookups", "Novelty table lookups, one per user "
                                     "due a slate, by result (hit or miss: the user's context was not in the "
                                     "table yet)", ["result"], registry=r)
        self.table_size = Gauge("explore_novelty_table_contexts", "Contexts in the worker's novelty table",
                                registry=r)
        self.slate_items = Counter("explore_slate_items", "Items sent in slates", registry=r)
        self.slate_novel_items = Counter("explore_slate_novel_items", "Items sent in slates that lie in one of "
                                         "the slate's novel clusters", registry=r)
        self.batch = Histogram("explore_batch_size", "Events per micro-batch", buckets=BATCH_BUCKETS, registry=r)
        self.stage = Histogram("explore_batch_stage_seconds", "Where a micro-batch's time goes: queued (its oldest "
                               "event's Kafka timestamp to the batch's start: transport and the batch wait), "
                               "admit (delivery checks), handle (validation, state, model calls), write (state, "
                               "DLQ, table fills), send (slates and feedback handed to the producer), ack",
                               ["stage"], buckets=INFER_BUCKETS, registry=r)
        self.lag = Gauge("explore_consumer_lag", "Records behind the end of each assigned interactions "
                         "partition", ["partition"], registry=r)
        self.acks_withheld = Counter("explore_acks_withheld", "Input records Faust skipped without delivering "
                                     "them (stopping, rebalancing) whose offsets were kept uncommitted, so that "
                                     "they are read again", registry=r)
        self.reseeks = Counter("explore_partition_reseeks", "Input partitions sought back: gap (a record came "
                               "before an earlier one was applied) or stall (records waited, nothing arrived for "
                               "15 s)", ["reason"], registry=r)
        self.gaps = Counter("explore_offset_gaps", "Gaps in an input partition's offsets stepped over after "
                            "waiting 10 s for them (offsets without a record, such as transaction markers; "
                            "the worker's log names the offsets)", registry=r)
        self.table_rows_ignored = Counter("explore_novelty_rows_ignored", "Novelty-topic records not used, by "
                                          "reason: stale (another catalog version) or invalid (not a row of "
                                          "this catalog: key, cluster ids, lengths)", ["reason"], registry=r)
        self.users_expired = Counter("explore_users_expired", "Users forgotten after user_ttl_s without an "
                                     "event (a tombstone in the changelog)", registry=r)
        self.task_restarts = Counter("explore_task_restarts", "Background tasks started again after a crash, "
                                     "by task", ["task"], registry=r)
        self.feedback = Counter("explore_feedback", "Proposed novel clusters resolved, by source (table or live), "
                                "rank (1-based place in the slate) and outcome: accepted (the user took it up "
                                "within the horizon), horizon (not accepted), evicted (the user's open slates "
                                "exceeded feedback_max_open), catalog (closed by a new catalog)",
                                ["source", "rank", "outcome"], registry=r)
        self.items_published = Gauge("explore_items_published", "Items published on the items topic (not in the "
                                     "catalog) that the worker applies events on", registry=r)
        self.item_records_ignored = Counter("explore_item_records_ignored", "Items-topic records not used, by reason: "
                                            "invalid, stale (placed under another catalog or level), in_catalog "
                                            "(the catalog's own cluster stands)", ["reason"], registry=r)
        self.retried = Counter("explore_retried_events", "Events that waited for their item (retry topic), by how "
                               "they left: applied (sent back to the input once the item was published), "
                               "expired (to the DLQ as unknown_item), again (still waiting)", ["outcome"],
                               registry=r)
        self.migrations = Counter("explore_state_migrations", "Users' states moved to the catalog the worker serves "
                                  "(issue 27), by kind: mapped (known clusters older than the history mapped from "
                                  "the earlier catalog), history_only (that catalog was not found), legacy (a "
                                  "state written before states recorded their catalog)", ["kind"], registry=r)
        self.serving_set = Gauge("explore_serving_set", "The model set the worker serves (`explore models list`; "
                                 "1: the one it was configured with)", registry=r)
        self.set_slates = Counter("explore_set_slates", "Slates sent, by the model set that made them", ["set"],
                                  registry=r)
        self.set_switches = Counter("explore_set_switches", "Switches to another model set at a batch boundary, by "
                                    "reason: publish or rollback (`explore models`), start (a worker starting on a "
                                    "published set)", ["reason"], registry=r)
        self.set_failures = Counter("explore_set_failures", "Model sets the worker could not load (catalog or files "
                                    "missing, digests differ: logged); it keeps serving its set and tries again",
                                    registry=r)
        self.triton_up.set(0)
        self.serving_set.set(1)

    def observe_call(self, model: str, path: str, seconds: float, ok: bool) -> None:
        if ok:
            self.inference.labels(model, path).observe(seconds)
        else:
            self.inference_errors.labels(model).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


PRECOMPUTE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class PrecomputeMetrics:
    """A precompute worker's metrics (`streams.precompute.worker`): its throughput is
    `rate(explore_precompute_contexts_total{outcome="published"})`, and the job's progress what
    `explore novelty precompute-status` reads from the group's committed offsets."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.contexts = Counter("explore_precompute_contexts", "Requests answered, by outcome: published (a row "
                                "committed to the novelty topic), stale (for another catalog), invalid (not a "
                                "context of this catalog); each committed with the input offsets", ["outcome"],
                                registry=r)
        self.batches = Counter("explore_precompute_batches", "Batches, by outcome: committed (rows and offsets in "
                               "one transaction) or aborted (read again)", ["outcome"], registry=r)
        self.errors = Counter("explore_precompute_errors", "Failed batches, by stage: triton (the call failed) or "
                              "kafka (the transaction failed); the batch is read again", ["stage"], registry=r)
        self.seconds = Histogram("explore_precompute_batch_seconds", "Seconds per batch by stage: triton (the "
                                 "model calls) and publish (rows, offsets, commit)", ["stage"],
                                 buckets=PRECOMPUTE_BUCKETS, registry=r)
        self.lag = Gauge("explore_precompute_lag", "Requests behind the end of this worker's partitions", registry=r)
        self.partitions = Gauge("explore_precompute_partitions", "Requests-topic partitions the group gave this "
                                "worker", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class StageClock:
    """Observes the time since the previous mark under each stage's label: one clock per micro-batch."""

    def __init__(self, histogram: Histogram) -> None:
        self.histogram = histogram
        self.last = time.perf_counter()
        self.spent: dict[str, float] = {}  # seconds by stage, for a traced batch's log line

    def mark(self, stage: str) -> None:
        now = time.perf_counter()
        self.observe(stage, now - self.last)
        self.last = now

    def observe(self, stage: str, seconds: float) -> None:
        """A stage timed elsewhere (the time a batch's oldest event waited before the batch began)."""
        self.histogram.labels(stage).observe(seconds)
        self.spent[stage] = seconds
