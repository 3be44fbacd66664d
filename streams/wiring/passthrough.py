"""A pass-through Faust worker: reads one topic and writes every record, unchanged, to another.

It is the floor that the engine is measured against (same broker, same Faust, no work), and the
smallest proof that a Faust agent runs on a broker. Records keep their key, so per-key order is
preserved; the agent takes micro-batches (`stream.take`) because sending per event costs ~40 %
of the throughput on this machine.

Run: `python -m streams.wiring.passthrough worker -l info` with, in the environment,
KAFKA_BOOTSTRAP, PASSTHROUGH_IN, PASSTHROUGH_OUT and optionally PASSTHROUGH_APP_ID,
PASSTHROUGH_DATA_DIR, PASSTHROUGH_BATCH (default 500), PASSTHROUGH_WITHIN_MS (default 20),
PASSTHROUGH_FETCH_MAX_WAIT_MS (default 100, as the engine's).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from streams.wiring.faust_app import env, make_app

app = make_app(
    env("PASSTHROUGH_APP_ID", "explore-passthrough"),
    env("KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
    Path(env("PASSTHROUGH_DATA_DIR", tempfile.gettempdir() + "/explore-passthrough")),
    fetch_max_wait_ms=int(env("PASSTHROUGH_FETCH_MAX_WAIT_MS", "100")),
)
source = app.topic(env("PASSTHROUGH_IN", "passthrough-in"), key_type=bytes, value_type=bytes,
                   key_serializer="raw", value_serializer="raw")
sink = app.topic(env("PASSTHROUGH_OUT", "passthrough-out"), key_type=bytes, value_type=bytes,
                 key_serializer="raw", value_serializer="raw")
BATCH = int(env("PASSTHROUGH_BATCH", "500"))
WITHIN_S = int(env("PASSTHROUGH_WITHIN_MS", "20")) / 1000


@app.agent(source)
async def forward(stream):  # type: ignore[no-untyped-def]
    """Copy each record to the sink, keyed as it came."""
    async for events in stream.take_events(BATCH, within=WITHIN_S):
        for event in events:
            await sink.send(key=event.key, value=event.value)


if __name__ == "__main__":
    app.main()
