"""One Triton model over gRPC: numpy in, numpy out, one long-lived connection."""

from __future__ import annotations

import numpy as np

from streams.inference.tls import TritonTLS, grpc_client_kwargs


class GrpcModel:
    """Named numpy inputs -> named numpy outputs of `model` on the Triton server at `url`."""

    def __init__(self, url: str, model: str, timeout_s: float = 5.0, tls: TritonTLS | None = None) -> None:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import np_to_triton_dtype

        self._grpc, self._dtype = grpcclient, np_to_triton_dtype
        self.client = grpcclient.InferenceServerClient(url=url, **grpc_client_kwargs(tls))
        self.model, self.timeout_s = model, timeout_s

    def infer(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        g = self._grpc
        tensors = []
        for name, array in inputs.items():
            tensor = g.InferInput(name, list(array.shape), self._dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        result = self.client.infer(self.model, tensors, outputs=[g.InferRequestedOutput(o) for o in outputs],
                                   client_timeout=self.timeout_s)
        return [result.as_numpy(o) for o in outputs]

    def close(self) -> None:
        self.client.close()
