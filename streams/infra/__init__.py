"""Kafka (embedded Tansu or real Apache Kafka), Triton (embedded tritonserver) and worker processes, managed.

May import: `streams`, `streams.inference`, `streams.web`.
"""
