"""Image networks (avb.conv), image data (avb.images), AIS evaluation and image figures.

    python -m pytest tests/test_conv.py -q      # CPU only, no downloads, well under 90 s

Tiny convolutions run on one thread here: on a shared two-core machine, two
OpenMP threads made a tiny conv step about 30x slower (7 ms vs 230 ms).
"""

import math
import os
import struct
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
import torch

from avb import images
from avb.config import Config
from avb.data import DataError, load_dataset
from avb.evaluate import ais_log_likelihood, evaluate, evaluating, log_likelihood
from avb.figures import interpolation_figure, reconstructions_figure, samples_figure, save_pictures
from avb.train import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = {
    "blackbox": {},
    "basis_ac": {"encoder": "basis", "adaptive_contrast": True},
    "vae": {"objective": "vae", "encoder": "gaussian"},
    "aae": {"adversary_input": "z"},
}
SHAPES = [("conv", (1, 8, 8)), ("conv", (1, 28, 28)), ("resnet", (3, 16, 16)), ("resnet", (3, 64, 64))]
OFFLINE = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",  # refuse at once
           "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": "", "NO_PROXY": ""}


def tiny_config(arch: str, variant: str, **changes) -> Config:
    values = dict(arch=arch, dataset="digits" if arch == "conv" else "celeba", hidden=4, adv_hidden=4, adv_inner=8,
                  latent_dim=3, noise_dim=3, basis_size=2, basis_hidden=8, depth=1, adv_depth=1, batch_size=8,
                  likelihood="bernoulli" if arch == "conv" else "gaussian")
    return Config(**{**values, **VARIANTS[variant], **changes})


# ------------------------------------------------------------------ networks
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("arch,shape", SHAPES)
def test_shapes_gradients_and_one_step(arch, shape, variant):
    cfg = tiny_config(arch, variant)
    trainer = Trainer(cfg, shape)
    m, x = trainer.models, torch.rand(8, *shape).round()
    q = trainer.encode(x)
    assert q.z.shape == (8, 3)
    assert (q.mean is not None) == (variant in ("basis_ac", "vae"))
    assert not torch.equal(q.z, trainer.encode(x).z)  # the noise reaches z
    assert m.decoder.params(q.z).shape == (8, *shape) and m.decoder.log_prob(x, q.z).shape == (8,)
    if m.adversary is not None:
        assert [t.shape for t in m.adversary(x, q.z, trainer.prior(8))] == [(8,), (8,)]
    trainer.step(x)
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert all(math.isfinite(v) for v in trainer.pop_metrics().values())
    with evaluating(trainer):  # batch norm in eval mode (running statistics)
        assert torch.isfinite(trainer.encode(x[:2]).z).all()


def test_layouts_follow_the_image_size():
    from avb.conv import channels_for, strides_for

    assert strides_for((1, 28, 28), 5, 5) == [2, 2, 1, 1, 1]  # 28 -> 14 -> 7
    assert strides_for((1, 8, 8), 2, 2) == [2, 1]  # 8 -> 4
    assert strides_for((3, 64, 64), 4, 4) == [2, 2, 2, 2]  # 64 -> 4
    assert channels_for(32, [2, 2, 1]) == [32, 64, 64]


def test_conv_blackbox_encoder_projects_noise_onto_every_unit():
    """The authors' add_linear: eps -> C*H*W values per layer, not one value per channel."""
    trainer = Trainer(tiny_config("conv", "blackbox", depth=2), (1, 28, 28))
    net = trainer.models.encoder.net
    assert net.shapes == [(4, 14, 14), (8, 7, 7)]
    assert [tuple(side.weight.shape) for side in net.sides] == [(4 * 14 * 14, 3), (8 * 7 * 7, 3)]
    x, eps = torch.rand(2, 1, 28, 28).round(), torch.zeros(2, 3)
    eps[1, 0] = 1.0  # same image, different noise: the first layer's maps differ unit by unit, not by a constant
    h = net.convs[0](2 * x[:1].expand(2, -1, -1, -1) - 1) + net.sides[0](eps).view(-1, 4, 14, 14)
    diff = (h[1] - h[0]).flatten(1)  # [C, H*W]
    assert (diff.std(1) > 0).all()


# ------------------------------------------------------------- short runs
def short_run(dataset: str, steps: int, batch_size: int) -> tuple[Trainer, object, list[dict]]:
    cfg = Config(dataset=dataset, arch="conv", hidden=8, adv_hidden=8, adv_inner=16, latent_dim=8, noise_dim=8,
                 batch_size=batch_size, lr=1e-3, adv_lr=1e-3)
    data = load_dataset(cfg, "cpu")
    trainer = Trainer(cfg, data.x_shape)
    history = []
    for i in range(steps):
        trainer.step(data.sample(cfg.batch_size, trainer.generator))
        if (i + 1) % 50 == 0:
            history.append(trainer.pop_metrics())
    return trainer, data, history


@pytest.mark.slow
def test_avb_on_digits_lowers_the_loss_and_evaluates():
    trainer, data, history = short_run("digits", 300, 64)
    assert history[-1]["loss_primal"] < 0.7 * history[0]["loss_primal"], history  # about 39 -> 18 nats
    metrics = evaluate(trainer, data.eval_batch(16), num_samples=500)
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    ais = ais_log_likelihood(trainer, data.eval_batch(4), num_temps=10, num_chains=2)
    assert set(ais) == {"ais_log_likelihood", "ais_log_likelihood_se", "ais_log_likelihood_mc_se"}
    assert all(math.isfinite(v) for v in ais.values()), ais


@pytest.mark.slow
def test_avb_on_mnist_sample_lowers_the_loss_and_evaluates():
    trainer, data, history = short_run("mnist_sample", 200, 32)
    assert data.x_shape == (1, 28, 28) and data.sizes == {"train": 4000, "valid": 500, "test": 500}
    assert history[-1]["loss_primal"] < 0.7 * history[0]["loss_primal"], history  # about 350 -> 150 nats
    metrics = evaluate(trainer, data.eval_batch(8), num_samples=500)
    assert all(math.isfinite(v) for v in metrics.values()), metrics


@pytest.mark.slow
@pytest.mark.parametrize("variant,temps,chains", [("blackbox", 500, 64), ("basis_ac", 300, 16)])
def test_ais_agrees_with_importance_sampling(variant, temps, chains):
    """2-D latent: IS with 100k samples is accurate to ~0.002 nats; AIS starts at each encoder's q0."""
    cfg = Config(hidden=32, adv_hidden=32, adv_inner=16, batch_size=64, lr=1e-3, adv_lr=1e-3, **VARIANTS[variant])
    data = load_dataset(cfg, "cpu")
    trainer = Trainer(cfg, data.x_shape)
    for _ in range(500):
        trainer.step(data.sample(cfg.batch_size, trainer.generator))
    is_mean = log_likelihood(trainer, data.test, 100_000, torch.Generator().manual_seed(0))[0].mean().item()
    ais = ais_log_likelihood(trainer, data.test, num_temps=temps, num_chains=chains)
    assert abs(ais["ais_log_likelihood"] - is_mean) < 0.05, (ais, is_mean)


# ----------------------------------------------------------------- figures
def test_image_figures(tmp_path):
    trainer = Trainer(tiny_config("conv", "basis_ac"), (1, 8, 8))
    x = torch.rand(16, 1, 8, 8).round()
    for path in (samples_figure(trainer, tmp_path / "samples.png", n=16),
                 reconstructions_figure(trainer, x, tmp_path / "rec.png"),
                 interpolation_figure(trainer, x[:8], tmp_path / "interp.png", steps=6)):
        assert path.stat().st_size > 0


# -------------------------------------------------------------------- data
def write_fake_mnist(raw, n: int) -> None:
    """The four idx files torchvision reads (uncompressed, as after its download)."""
    raw.mkdir(parents=True)
    for prefix in ("train", "t10k"):
        pixels = torch.randint(0, 256, (n * 28 * 28,), dtype=torch.uint8).numpy().tobytes()
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + pixels)
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + bytes(n))


def test_mnist_from_files_and_binarization_only_for_bernoulli(tmp_path):
    write_fake_mnist(tmp_path / "MNIST" / "raw", 10)
    cfg = Config(dataset="mnist", data_root=str(tmp_path), arch="conv")
    parts = images.load(cfg)  # 10 training images -> 9 train / 1 valid (60k -> 50k / 10k), official test
    assert [len(parts[k]) for k in ("train", "valid", "test")] == [9, 1, 10]
    assert parts["train"].shape[1:] == (1, 28, 28) and parts["train"].dtype == torch.uint8
    assert load_dataset(cfg, "cpu").binarize and not load_dataset(cfg.replace(likelihood="gaussian"), "cpu").binarize
    batch = load_dataset(cfg.replace(likelihood="gaussian"), "cpu").eval_batch(4)
    assert batch.dtype == torch.float32 and 0 <= batch.min() and batch.max() <= 1


HOLD_LOCK = """
import sys, time
from pathlib import Path
from avb.images import once_per_node
root = Path(sys.argv[1])
with once_per_node(root, "mnist"):
    start = time.time()
    time.sleep(0.5)
    (root / sys.argv[2]).write_text(f"{start} {time.time()}")
"""


def test_a_node_prepares_its_data_folder_once_at_a_time(tmp_path):
    """Trials starting together on one node must not download or build a cache side by side."""
    procs = [subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path), f"p{i}"]) for i in range(3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    spans = sorted(tuple(map(float, (tmp_path / f"p{i}").read_text().split())) for i in range(3))
    assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:])), spans


def test_folder_of_images(tmp_path):
    from PIL import Image

    (tmp_path / "sub").mkdir()
    for i in range(5):
        Image.new("RGB", (40 + 10 * i, 70), (50 * i, 0, 0)).save(tmp_path / "sub" / f"{i}.png")
    parts = images.load(Config(dataset="folder", data_root=str(tmp_path), arch="resnet"))
    assert [len(parts[k]) for k in ("train", "valid", "test")] == [3, 1, 1]
    assert parts["train"].shape[1:] == (3, 64, 64) and parts["train"].dtype == torch.uint8


def test_celeba_transform_crops_and_resizes():
    from PIL import Image

    x = images._transform(images.CELEBA_CROP)(Image.new("RGB", (178, 218)))
    assert x.shape == (3, 64, 64) and x.dtype == torch.uint8


@pytest.mark.parametrize("dataset", ["mnist", "celeba", "folder"])
def test_missing_data_is_a_one_line_data_error(dataset, tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network (test)")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataError) as err:
        images.load(Config(dataset=dataset, data_root=str(tmp_path), arch="conv"))
    message = str(err.value)
    assert len(message.splitlines()) == 1 and str(tmp_path) in message


@pytest.mark.slow
def test_cli_exits_2_with_one_line_when_data_are_missing(tmp_path):
    cmd = [sys.executable, "-m", "avb", "--dataset", "mnist", "--data-root", str(tmp_path), "--arch", "conv",
           "--steps", "1", "--out", str(tmp_path / "run")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, **OFFLINE})
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "MNIST" in done.stderr


@pytest.mark.parametrize("dataset,sizes", [("synthetic", (4, 4, 4)), ("digits", (1297, 250, 250)),
                                           ("mnist_sample", (4000, 500, 500))])
@pytest.mark.slow
def test_splits_are_disjoint_seeded_and_sized(dataset, sizes):
    cfg = Config(dataset=dataset, arch="mlp")
    data = load_dataset(cfg, "cpu")
    assert tuple(data.sizes.values()) == sizes
    if dataset == "synthetic":  # the paper's setting: the four images are every split
        assert torch.equal(data.train, data.valid) and torch.equal(data.train, data.test)
        return
    rows = {k: {tuple(r.tolist()) for r in getattr(data, k).flatten(1)} for k in ("train", "valid", "test")}
    assert not rows["train"] & rows["test"] and not rows["train"] & rows["valid"] and not rows["valid"] & rows["test"]
    again, other = load_dataset(cfg, "cpu"), load_dataset(cfg.replace(split_seed=1), "cpu")
    assert torch.equal(again.test, data.test) and not torch.equal(other.test, data.test)
    assert torch.equal(data.eval_batch(8, "test"), data.eval_batch(8, "test"))  # fixed binarization
    with pytest.raises(ValueError, match="split"):
        data.eval_batch(8, "validation")


def test_folder_errors_are_one_line(tmp_path):
    from PIL import Image

    for i in range(2):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{i}.png")
    cfg = Config(dataset="folder", data_root=str(tmp_path), arch="resnet")
    with pytest.raises(DataError, match="at least three") as err:
        images.load(cfg)
    assert len(str(err.value).splitlines()) == 1
    Image.new("RGB", (8, 8)).save(tmp_path / "2.png")
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(DataError, match="notes.png is not a readable image") as err:
        images.load(cfg)
    assert len(str(err.value).splitlines()) == 1


@pytest.mark.parametrize("n", [0, 1, 2])
def test_pictures_of_tiny_splits_never_crash(tmp_path, n):
    trainer = Trainer(tiny_config("conv", "basis_ac"), (1, 8, 8))
    x = torch.rand(n, 1, 8, 8).round()
    paths = save_pictures(trainer, x, tmp_path)
    assert {p.name for p in paths} == {"samples.png", *(["latent.png", "reconstructions.png"] if n else []),
                                       *(["interpolation.png"] if n >= 2 else [])}
