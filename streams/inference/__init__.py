"""Inference clients of the streaming engine: Triton over gRPC, with in-process onnxruntime twins.

May import: `interests.runtime`.
"""
