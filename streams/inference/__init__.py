"""Inference clients of the streaming engine: Triton over gRPC, with in-process onnxruntime twins."""
