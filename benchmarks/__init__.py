"""Throughput / MFU benchmarks of deft_jax against a PyTorch peer (see harness.py)."""
