"""fat.device: the one device picker every stage uses."""
from __future__ import annotations

import pytest
import torch

from fat.device import pick_device


def test_pick_device_follows_cuda_availability(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device().type == "cuda"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_pick_device_is_cpu_here():
    assert pick_device() == torch.device("cpu")
