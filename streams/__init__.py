"""The streaming engine: Faust application, inference clients, metrics, embedded infrastructure.

Never imports PyTorch; reads what `exporters` wrote on disk.
"""
