"""Save, restore, continue == an uninterrupted run (bitwise on CPU with the same seed)."""

from dataclasses import replace

import pytest
import torch

from avb import checkpoint
from avb.checkpoint import CheckpointError
from avb.data import load_dataset
from avb.fit import fit
from avb.train import DivergedError, Trainer


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
        other.load_state_dict(torch.load(path, weights_only=True))


def test_checkpoint_written_before_a_config_field_was_added_still_loads(tiny, tmp_path):
    """A field added to Config later (with its default) does not make older checkpoints unreadable."""
    data = load_dataset(tiny, "cpu")
    path = checkpoint.save(run(Trainer(tiny, data.x_shape), data, 2), tmp_path / "trainer.pt")
    state = torch.load(path, weights_only=True)
    for name in ("eval_estimator", "eval_ais_temps", "eval_ais_chains"):  # added after the first checkpoints
        del state["config"][name]
    torch.save(state, path)
    assert checkpoint.load(path).step_count == 2


def test_checkpoints_load_with_weights_only(tiny, tmp_path):
    data = load_dataset(tiny, "cpu")
    path = checkpoint.save(run(Trainer(tiny, data.x_shape), data, 2), tmp_path / "trainer.pt",
                           metrics={"log_likelihood": -1.5}, best=-1.5)
    state = torch.load(path, weights_only=True)  # tensors and plain values only
    assert state["step"] == 2 and checkpoint.extra(path) == {"metrics": {"log_likelihood": -1.5}, "best": -1.5}


@pytest.mark.parametrize("kind", ["missing", "folder", "truncated", "random", "foreign", "pickled code"])
def test_unusable_checkpoints_raise_one_line(tiny, tmp_path, kind):
    data = load_dataset(tiny, "cpu")
    good = checkpoint.save(Trainer(tiny, data.x_shape), tmp_path / "good.pt")
    path = tmp_path / "trainer.pt"
    if kind == "folder":
        path.mkdir()
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[:3000])
    elif kind == "random":
        path.write_bytes(torch.randint(0, 256, (5000,), dtype=torch.uint8).numpy().tobytes())
    elif kind == "foreign":
        torch.save({"weights": torch.zeros(3)}, path)
    elif kind == "pickled code":
        torch.save({"f": print}, path)
    with pytest.raises(CheckpointError) as err:
        checkpoint.load(path)
    assert isinstance(err.value, ValueError)
    assert len(str(err.value).splitlines()) == 1 and str(path) in str(err.value)


def test_fit_logs_checkpoints_and_matches_plain_steps(tiny, tmp_path):
    data = load_dataset(tiny, "cpu")
    plain = run(Trainer(tiny, data.x_shape), data, 25)
    logged = []
    trainer = Trainer(tiny, data.x_shape)
    last = fit(trainer, data, 25, log_every=10, on_log=lambda s, m, r: logged.append((s, m, r)),
               checkpoint_every=20, checkpoint_path=tmp_path / "trainer.pt")
    assert [s for s, _, _ in logged] == [10, 20, 25] and all(r > 0 for _, _, r in logged)
    assert last == logged[-1][1] and set(last) == {"loss_primal", "loss_adversary", "train_reconstruction",
                                                   "train_kl"}
    assert checkpoint.load(tmp_path / "trainer.pt").step_count == 20
    vae = Trainer(replace(tiny, objective="vae", encoder="gaussian", adaptive_contrast=False), data.x_shape)
    assert "loss_adversary" not in fit(vae, data, 3) and "train_kl" in fit(vae, data, 6)
    for a, b in zip(plain.models.state_dict().values(), trainer.models.state_dict().values()):
        assert torch.equal(a, b)
    assert fit(trainer, data, 25) == {}  # already there: nothing to do


def test_fit_raises_on_divergence(tiny):
    data = load_dataset(tiny, "cpu")
    trainer = Trainer(tiny, data.x_shape)
    with torch.no_grad():
        for p in trainer.models.decoder.parameters():
            p.fill_(float("nan"))
    with pytest.raises(DivergedError):
        fit(trainer, data, 5, log_every=5)


def test_fit_calls_a_finite_blow_up_diverged(tiny):
    """Losses of millions of nats are finite but no model: beyond 100 nats per data dimension is diverged."""
    data = load_dataset(tiny, "cpu")
    trainer = Trainer(tiny, data.x_shape)
    with torch.no_grad():
        for p in trainer.models.decoder.parameters():
            p.mul_(1e6)  # logits of +-1e6: a wrong pixel costs about 1e6 nats, still finite
    with pytest.raises(DivergedError, match="beyond 400 nats"):
        fit(trainer, data, 2, log_every=2)
