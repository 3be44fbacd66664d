"""Triton first, in-process onnxruntime when Triton is unreachable, Triton again when it returns.

One long-lived asyncio gRPC client per worker (`tritonclient.grpc.aio`), created on first use
inside the worker's event loop. A request that fails or times out is retried `retries` times;
then the router marks Triton down and serves every request from the local twins (the very ONNX
files Triton serves, in a thread so the event loop keeps running) for `retry_after_s`, after
which the next request probes Triton again. A request is never dropped: whatever Triton does,
the answer comes from one path or the other, and `on_call` reports which.

A request with more rows than a model serves (`max_batch`, its `max_batch_size`) is split into
calls of at most that many rows. A request Triton refuses (INVALID_ARGUMENT: it is this request
that is wrong, not the server) is answered by the local twin without retry, and Triton stays up
for every other request. A model Triton answers for but cannot serve (NOT_FOUND: not loaded;
INTERNAL: it raised) is served by its twin for `retry_after_s`, while Triton keeps serving the
other models: before, a missing `seqrec` sent `interest_generator` to the fallback too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np

from streams.inference.tls import TritonTLS, grpc_client_kwargs

log = logging.getLogger(__name__)

LocalModel = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


def row_chunks(inputs: dict[str, np.ndarray], limit: int | None) -> list[dict[str, np.ndarray]]:
    """`inputs` split along their first (batch) axis into pieces of at most `limit` rows (None: no limit)."""
    rows = len(next(iter(inputs.values())))
    if not limit or rows <= limit:
        return [inputs]
    return [{name: array[start:start + limit] for name, array in inputs.items()} for start in range(0, rows, limit)]


def is_refusal(exc: BaseException) -> bool:
    """Triton answered, and refused this request (INVALID_ARGUMENT: a shape, a type, a batch too large):
    an error of the request, which a retry or another server cannot fix, not an outage."""
    status = getattr(exc, "status", None)
    return callable(status) and status() == "StatusCode.INVALID_ARGUMENT"


def is_model_failure(exc: BaseException) -> bool:
    """Triton answered, and cannot serve this model (NOT_FOUND: not loaded or unknown; INTERNAL: the model
    failed): the server is up for the other models."""
    status = getattr(exc, "status", None)
    return callable(status) and status() in ("StatusCode.NOT_FOUND", "StatusCode.INTERNAL")


class CallObserver(Protocol):
    def __call__(self, model: str, path: str, seconds: float, ok: bool) -> None: ...


class ModelRouter:
    """`await infer(model, inputs, outputs)` -> (arrays, path) with path "triton" or "onnx"."""

    def __init__(self, url: str, local: dict[str, LocalModel], timeout_s: float = 2.0, retries: int = 1,
                 retry_after_s: float = 5.0, on_call: CallObserver | None = None,
                 on_state: Callable[[bool], None] | None = None,
                 max_batch: dict[str, int | None] | None = None, tls: TritonTLS | None = None) -> None:
        self.url, self.local, self.tls = url, local, tls
        self.max_batch = max_batch or {}
        self.timeout_s, self.retries, self.retry_after_s = timeout_s, retries, retry_after_s
        self.on_call = on_call or (lambda *a: None)
        self.on_state = on_state or (lambda up: None)
        self.client = None
        self.down_until = 0.0 if url else float("inf")
        self.model_down_until: dict[str, float] = {}  # models Triton cannot serve, while it serves the rest
        self.last_error = "" if url else "no Triton URL configured"
        self.reported_up: bool | None = None  # what `on_state` last said; None: nothing yet
        self.version = ""  # the Triton version every call names ("": the server's choice); `serve` sets it

    def serve(self, local: dict[str, LocalModel], max_batch: dict[str, int | None], version: int) -> None:
        """Serve another model set from now on: its in-process twins, batch limits and Triton version number
        (`streams.core.model_sets`); a model Triton could not serve under the old set is tried again."""
        self.local, self.max_batch, self.version = local, max_batch, str(version)
        self.model_down_until.clear()

    @property
    def triton_up(self) -> bool:
        return time.monotonic() >= self.down_until

    def _client(self):  # type: ignore[no-untyped-def]
        if self.client is None:
            import tritonclient.grpc.aio as grpcaio

            self.client = grpcaio.InferenceServerClient(url=self.url,
                                                        **grpc_client_kwargs(self.tls, self.retry_after_s))
        return self.client

    async def _triton(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        import tritonclient.grpc.aio as grpcaio
        from tritonclient.utils import np_to_triton_dtype

        tensors = []
        for name, array in inputs.items():
            tensor = grpcaio.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        result = await asyncio.wait_for(
            self._client().infer(model, tensors, model_version=self.version,
                                 outputs=[grpcaio.InferRequestedOutput(o) for o in outputs],
                                 client_timeout=self.timeout_s),
            self.timeout_s + 0.5)
        return [result.as_numpy(o) for o in outputs]

    async def infer(self, model: str, inputs: dict[str, np.ndarray],
                    outputs: list[str]) -> tuple[list[np.ndarray], str]:
        """The outputs for every row of `inputs`, in calls of at most the model's batch limit; the path is
        "triton" when Triton answered every call, else "onnx"."""
        chunks = row_chunks(inputs, self.max_batch.get(model))
        answers = [await self._infer_call(model, chunk, outputs) for chunk in chunks]
        if len(answers) == 1:
            return answers[0]
        arrays = [np.concatenate([a[i] for a, _ in answers]) for i in range(len(outputs))]
        return arrays, "triton" if all(path == "triton" for _, path in answers) else "onnx"

    async def _infer_call(self, model: str, inputs: dict[str, np.ndarray],
                          outputs: list[str]) -> tuple[list[np.ndarray], str]:
        if self.triton_up and time.monotonic() >= self.model_down_until.get(model, 0.0):
            for _attempt in range(self.retries + 1):
                t0 = time.perf_counter()
                try:
                    arrays = await self._triton(model, inputs, outputs)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # any transport or server error: retry, then fall back
                    self.on_call(model, "triton", time.perf_counter() - t0, False)
                    self.last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
                    if is_refusal(exc):
                        return await self._local(model, inputs)  # this request only; Triton stays up
                    if is_model_failure(exc):  # this model only, for a while; Triton stays up for the rest
                        self.model_down_until[model] = time.monotonic() + self.retry_after_s
                        log.warning(f"Triton at {self.url} cannot serve {model} ({self.last_error}); serving it "
                                    f"from the in-process model for {self.retry_after_s:.0f} s")
                        return await self._local(model, inputs)
                    await self._reset_client()
                    continue
                self.on_call(model, "triton", time.perf_counter() - t0, True)
                self._report(True)
                return arrays, "triton"
            self.down_until = time.monotonic() + self.retry_after_s
            self._report(False)
            log.warning(f"Triton at {self.url} failed ({self.last_error}); serving {model} and the rest from "
                        f"the in-process models for {self.retry_after_s:.0f} s")
        return await self._local(model, inputs)

    def _report(self, up: bool) -> None:
        self.reported_up = up
        self.on_state(up)

    async def probe(self) -> bool | None:
        """Ask Triton whether it is ready, unless a call said it was up: the worker's timer calls this
        so that `explore_triton_up` and `/health` come back to "up" when Triton does, even while no
        event asks for a model (before, a quiet worker said "fallback" for good after an outage),
        and so that the first events after it are served by Triton, not by the twin.
        Returns what it found (None: no Triton configured, or it was already up)."""
        if not self.url or self.reported_up:
            return None
        try:
            ready = bool(await asyncio.wait_for(self._client().is_server_ready(client_timeout=self.timeout_s),
                                                self.timeout_s + 0.5))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # still down: the fallback goes on; a fresh channel for the next probe
            self.last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
            await self._reset_client()
            return False
        if ready:
            if self.reported_up is False:
                log.info(f"Triton at {self.url} is ready again; the models are served by it")
            self.down_until = 0.0
            self._report(True)
        return ready

    async def _local(self, model: str, inputs: dict[str, np.ndarray]) -> tuple[list[np.ndarray], str]:
        """The in-process twin's answer."""
        if model not in self.local:
            raise RuntimeError(f"Triton is unreachable ({self.last_error}) and {model!r} has no local fallback")
        t0 = time.perf_counter()
        arrays = await asyncio.get_running_loop().run_in_executor(None, self.local[model], inputs)
        self.on_call(model, "onnx", time.perf_counter() - t0, True)
        return arrays, "onnx"

    async def _reset_client(self) -> None:
        """A failed channel may stay broken: start the next attempt on a fresh one."""
        client, self.client = self.client, None
        if client is not None:
            with contextlib.suppress(Exception):  # closing a broken channel may fail too; nothing to keep
                await client.close()

    async def close(self) -> None:
        await self._reset_client()
