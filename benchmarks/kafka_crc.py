"""kafka-python with its C CRC32C (the `crc32c` package) against its pure-Python one, side by side.

kafka-python checks the CRC32C of every record batch it writes and reads. Without the optional
`crc32c` package it computes it in Python, 0.2-0.3 s a MB on the 2-core machine (its reads): what the table's
publisher, the precompute workers, `explore novelty dump` and the tests' topic readers pay per MB.
This writes and reads the same novelty rows (binary, 64 ranked clusters) on one Apache Kafka with
each, alternately, and prints the rates. The pure-Python function is kafka-python's own, swapped in
for the run.

Run: python benchmarks/kafka_crc.py [--rows 20000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def use_crc(fn: Callable) -> None:
    """Make kafka-python's record batches use `fn` for their CRC32C (both modules bind the name)."""
    from kafka.record import default_records, util

    util.calc_crc32c = fn
    default_records.calc_crc32c = fn


def write_read(bootstrap: str, topic: str, rows: list[tuple[bytes, bytes]]) -> tuple[float, float]:
    """Seconds to write `rows` (acks=all) and to read them back from the beginning."""
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    t = time.perf_counter()
    for key, value in rows:
        producer.send(topic, key=key, value=value)
    producer.flush()
    written = time.perf_counter() - t
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest")
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    t, got = time.perf_counter(), 0
    while got < len(rows):
        got += sum(len(batch) for batch in consumer.poll(timeout_ms=500, max_records=10_000).values())
    read = time.perf_counter() - t
    consumer.close()
    return written, read


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20_000, help="novelty rows written and read per run")
    ap.add_argument("--rounds", type=int, default=2, help="runs of each, alternating")
    args = ap.parse_args()
    from kafka.record import util
    from kafka.record._crc32c import crc as crc_python

    from streams.core.table import context_key, row_value
    from streams.infra.apache_kafka import ApacheKafka

    if util.crc32c_c is None:
        raise SystemExit("the crc32c package is not installed: nothing to compare (pip install crc32c)")
    variants = {"C (crc32c)": util.calc_crc32c, "pure Python": crc_python}
    rows = [(context_key([i % 1000, 1000 + i // 1000]),
             row_value(list(range(64)), list(np.linspace(0.0, -5.0, 64)), "v1", "precompute"))
            for i in range(args.rows)]
    mb = sum(len(k) + len(v) for k, v in rows) / 1e6
    print(f"{args.rows:,} binary novelty rows of 64 clusters, {mb:.1f} MB, on Apache Kafka (one partition)")
    with ApacheKafka(Path(tempfile.mkdtemp(prefix="kafka-crc-")) / "kafka") as kafka:
        for n in range(args.rounds):
            for name, fn in variants.items():
                use_crc(fn)
                written, read = write_read(kafka.bootstrap, f"crc-{n}-{name[0]}", rows)
                print(f"round {n + 1}, {name:<12} write {written:6.2f} s ({mb / written:5.1f} MB/s), "
                      f"read {read:6.2f} s ({mb / read:5.1f} MB/s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
