"""PyTorch/ONNX -> Triton: exports, parity checks, and writing the Triton model repository.

May import: `interests.*`.
"""
