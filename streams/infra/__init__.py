"""Kafka (embedded Tansu or real Apache Kafka) and Triton (embedded tritonserver), managed."""
