"""Shared test fixtures: the data assets beside the checkout, and a fixed CPU device count."""

import os
from pathlib import Path

# Multi-device behaviour is simulated on the CPU; must be set before jax initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO.parent / "shared" / "assets"


@pytest.fixture(scope="session")
def assets_dir() -> Path:
  if not ASSETS.exists():
    pytest.skip(f"real-data assets not found at {ASSETS} (they sit beside the checkout in CI)")
  return ASSETS
