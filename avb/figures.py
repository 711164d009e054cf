"""Pictures of a trained model: the latent space of the paper's Figure 3, and image grids.

Image models (avb.conv): samples (Figures 4, 5), reconstructions and latent
interpolations (Figure 6), each a grid drawn by `image_grid`.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from avb.evaluate import evaluating, posterior_samples  # noqa: E402
from avb.train import Trainer  # noqa: E402


def latent_figure(trainer: Trainer, x: Tensor, path: str | Path, n: int = 2000, title: str = "",
                  seed: int = 0) -> Path:
    """Samples of q(z|x) for up to 10 data points, one colour per point (first two latent dims)."""
    g = torch.Generator(trainer.device).manual_seed(seed)
    x = x[:10]
    with evaluating(trainer):
        z = posterior_samples(trainer, x, n, g).float().cpu()  # [B, n, D]
    if z.shape[2] == 1:  # a 1-D latent: spread the points vertically
        z = torch.cat([z, 0.1 * torch.randn(z.shape, generator=torch.Generator().manual_seed(seed))], dim=2)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for i in range(len(x)):
        ax.scatter(z[i, :, 0], z[i, :, 1], s=1.5, alpha=0.4, label=f"x{i + 1}", rasterized=True)
    lim = max(3.5, float(z[..., :2].abs().quantile(0.995)))
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), xlabel="$z_1$", ylabel="$z_2$", aspect="equal", title=title)
    ax.legend(markerscale=6, fontsize=7, loc="upper right")
    return save_figure(fig, path)


def image_grid(images: Tensor, path: str | Path, nrow: int = 8, title: str = "") -> Path:
    """A grid of images [N, C, H, W] with values in [0, 1]."""
    from torchvision.utils import make_grid

    grid = make_grid(images.float().clamp(0, 1).cpu(), nrow=nrow, padding=1, pad_value=1.0)
    fig, ax = plt.subplots(figsize=(6, 6 * grid.shape[1] / grid.shape[2]))
    ax.imshow(grid.permute(1, 2, 0).squeeze(-1), cmap="gray", vmin=0, vmax=1)
    ax.set_axis_off()
    ax.set_title(title)
    return save_figure(fig, path)


def samples_figure(trainer: Trainer, path: str | Path, n: int = 64, nrow: int = 8, title: str = "",
                   seed: int = 0) -> Path:
    """Decoder means E[x|z] for n codes z ~ p(z) (paper Figures 4 and 5)."""
    g = torch.Generator(trainer.device).manual_seed(seed)
    with evaluating(trainer):
        x = trainer.models.decoder.mean(trainer.prior(n, g))  # [n, C, H, W]
    return image_grid(x, path, nrow, title)


def reconstructions_figure(trainer: Trainer, x: Tensor, path: str | Path, nrow: int = 8, title: str = "",
                           seed: int = 0) -> Path:
    """Rows of data points, each followed by a row of their reconstructions E[x|z], z ~ q(z|x) (Figure 6)."""
    nrow = min(nrow, len(x))
    x = x[: len(x) // nrow * nrow].float()
    g = torch.Generator(trainer.device).manual_seed(seed)
    with evaluating(trainer):
        rec = trainer.models.decoder.mean(trainer.encode(x, g).z).float()  # [B, C, H, W]
    rows = torch.stack([x, rec]).view(2, -1, nrow, *x.shape[1:]).transpose(0, 1)  # [B / nrow, 2, nrow, C, H, W]
    return image_grid(rows.flatten(0, 2), path, nrow, title)


def interpolation_figure(trainer: Trainer, x: Tensor, path: str | Path, steps: int = 8, title: str = "",
                         seed: int = 0) -> Path:
    """One row per pair (x[2i], x[2i+1]): decoded codes on the line between their codes (Figure 6).

    Codes are the encoder's mean when known, otherwise one sample of q(z|x).
    """
    g = torch.Generator(trainer.device).manual_seed(seed)
    with evaluating(trainer):
        q = trainer.encode(x[: len(x) // 2 * 2], g)
        z = (q.mean if q.mean is not None else q.z).view(-1, 2, q.z.shape[1])  # [P, 2, D]
        w = torch.linspace(0, 1, steps, device=z.device).view(1, steps, 1)
        path_z = (1 - w) * z[:, :1] + w * z[:, 1:]  # [P, steps, D]
        images = trainer.models.decoder.mean(path_z.flatten(0, 1))  # [P * steps, C, H, W]
    return image_grid(images, path, steps, title)


def save_pictures(trainer: Trainer, x: Tensor, folder: str | Path, title: str = "") -> list[Path]:
    """The pictures of a run: latent space (Figure 3); for image sets also samples,
    reconstructions and a latent interpolation (Figures 4-6). x: evaluation points.

    What cannot be drawn from so few points is skipped: the latent space and the
    reconstructions need one point, the interpolation two."""
    folder = Path(folder)
    paths = [latent_figure(trainer, x, folder / "latent.png", title=title)] if len(x) >= 1 else []
    if trainer.cfg.dataset != "synthetic":
        paths.append(samples_figure(trainer, folder / "samples.png", title=title))
        if len(x) >= 1:
            paths.append(reconstructions_figure(trainer, x[:32], folder / "reconstructions.png", title=title))
        if len(x) >= 2:
            paths.append(interpolation_figure(trainer, x[:16], folder / "interpolation.png", title=title))
    return paths


def save_figure(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
