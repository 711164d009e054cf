"""Save, restore, continue == an uninterrupted run (bitwise on CPU with the same seed)."""

import pytest
import torch

from avb import checkpoint
from avb.data import load_dataset
from avb.train import Trainer


def run(trainer, data, steps):
    for _ in range(steps):
        trainer.step(data.sample(trainer.cfg.batch_size, trainer.generator))
    return trainer


@pytest.mark.parametrize("changes", [
    {},
    {"encoder": "basis", "adaptive_contrast": True, "adv_steps": 2},
    {"objective": "vae", "encoder": "gaussian"},
    {"adversary_input": "z", "adversary_loss": "kl", "kl_warmup_steps": 10},
])
def test_restore_continues_exactly(tiny, tmp_path, changes):
    cfg = tiny.replace(**changes)
    data = load_dataset(cfg, "cpu")
    straight = run(Trainer(cfg, data.x_shape), data, 30)

    first = run(Trainer(cfg, data.x_shape), data, 15)
    path = checkpoint.save(first, tmp_path / "trainer.pt", note="half way")
    del first
    resumed = run(checkpoint.load(path), data, 15)

    assert resumed.step_count == straight.step_count == 30
    for (name, a), (_, b) in zip(straight.models.state_dict().items(), resumed.models.state_dict().items()):
        assert torch.equal(a, b), name
    assert straight.pop_metrics() == resumed.pop_metrics()
    assert checkpoint.extra(path) == {"note": "half way"}


def test_failed_save_keeps_the_previous_checkpoint(tiny, tmp_path):
    data = load_dataset(tiny, "cpu")
    trainer = run(Trainer(tiny, data.x_shape), data, 3)
    path = checkpoint.save(trainer, tmp_path / "trainer.pt")
    good = path.read_bytes()
    with pytest.raises(Exception):  # noqa: B017  (an unpicklable extra makes torch.save fail mid-way)
        checkpoint.save(trainer, path, bad=lambda: None)
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["trainer.pt"]  # no temporary file left behind


def test_checkpoint_from_another_config_is_refused(tiny, tmp_path):
    data = load_dataset(tiny, "cpu")
    path = checkpoint.save(Trainer(tiny, data.x_shape), tmp_path / "trainer.pt")
    other = Trainer(tiny.replace(lr=0.5), data.x_shape)
    with pytest.raises(ValueError, match="different config"):
        other.load_state_dict(torch.load(path, weights_only=False))
