"""The streaming engine, by role: the pure core, its Kafka and Faust wiring, the web side, the precompute.

`config.py` (the engine's settings) and `kafka_security.py` (how its Kafka clients connect) sit
beside the subpackages, below all of them. Never imports PyTorch; reads what `exporters` wrote.

May import: `streams.inference`.
"""
