import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
torch.set_num_threads(1)  # small ops: one thread is faster and steadier on a shared 2-core machine


@pytest.fixture
def tiny():
    """A config small enough for unit tests on two CPU cores."""
    from avb.config import Config

    return Config(hidden=32, adv_hidden=32, adv_inner=16, batch_size=64, steps=20, eval_samples=2000)
