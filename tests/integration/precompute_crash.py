"""`explore novelty precompute-worker` that SIGKILLs itself inside its Nth transaction.

usage: python tests/integration/precompute_crash.py N [precompute-worker options]

Before the Nth commit it flushes the batch's rows to the broker and kills itself, so that the rows
of an open transaction are on the novelty topic when the worker dies: the resume test then checks
that no read_committed reader sees them and that the next worker answers that batch again.
"""

from __future__ import annotations

import os
import signal
import sys

from kafka import KafkaProducer

from explore.cli import main


def crash_at(n: int) -> None:
    """Make the Nth `commit_transaction` of this process flush its rows and die by SIGKILL."""
    original = KafkaProducer.commit_transaction
    calls = [0]

    def commit(self: KafkaProducer) -> None:
        calls[0] += 1
        if calls[0] == n:
            self.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        original(self)

    KafkaProducer.commit_transaction = commit  # type: ignore[method-assign]


if __name__ == "__main__":
    crash_at(int(sys.argv[1]))
    print(f"pid {os.getpid()}", flush=True)  # the rows' header names it: the test tells this worker's rows apart
    sys.exit(main(["novelty", "precompute-worker", *sys.argv[2:]]))
