"""fat.training.checkpoint: atomic save/load, fingerprints that refuse another run's checkpoint."""
from __future__ import annotations

import torch

from fat.training.checkpoint import Checkpointer, file_digest, fingerprint


def test_roundtrip_keeps_tensors_rng_and_history(tmp_path):
    ck = Checkpointer(tmp_path / "ck" / "baseline@0.pt", "abc")
    assert ck.load() is None
    state = {"epoch": 3, "model": {"w": torch.arange(4.0)}, "torch_rng": torch.get_rng_state(),
             "history": [{"epoch": 1, "train_loss": 0.5}]}
    ck.save(state)
    got = ck.load()
    assert got["epoch"] == 3 and torch.equal(got["model"]["w"], torch.arange(4.0))
    assert torch.equal(got["torch_rng"], state["torch_rng"]) and got["history"] == state["history"]
    assert [p.name for p in (tmp_path / "ck").iterdir()] == ["baseline@0.pt"]  # no temp files left
    ck.clear()
    assert ck.load() is None and not ck.path.exists()


def test_other_runs_and_unreadable_checkpoints_are_ignored(tmp_path, caplog):
    Checkpointer(tmp_path / "x.pt", "old").save({"epoch": 1})
    assert Checkpointer(tmp_path / "x.pt", "new").load() is None
    assert "different run" in caplog.text
    (tmp_path / "x.pt").write_bytes(b"not a checkpoint")
    assert Checkpointer(tmp_path / "x.pt", "new").load() is None
    assert "unreadable" in caplog.text


def test_fingerprint_and_digest_change_with_their_inputs(tmp_path):
    assert fingerprint(a=1, b={"x": 2}) == fingerprint(b={"x": 2}, a=1)
    assert fingerprint(a=1) != fingerprint(a=2)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f.txt").write_text("one")
    before = file_digest(tmp_path / "d")
    (tmp_path / "d" / "f.txt").write_text("two")
    assert file_digest(tmp_path / "d") != before


class _RunsCode:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def test_crafted_checkpoint_is_refused_with_a_warning_naming_it_and_runs_nothing(tmp_path, caplog):
    witness = tmp_path / "code-ran"
    path = tmp_path / "baseline@0.pt"
    torch.save({"epoch": 3, "fingerprint": "fp", "history": [], "payload": _RunsCode(witness)}, path)
    assert Checkpointer(path, "fp").load() is None  # training starts afresh instead
    assert not witness.exists()
    assert f"{path}: checkpoint refused and ignored" in caplog.text and "could run code" in caplog.text
