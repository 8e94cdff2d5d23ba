"""Pictures saved and logged after each validation: reconstructions of the VQ-VAE, samples drawn from the prior."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.handlers import MLFlowHandler
from torch import nn

from oasis_gen.engines.distributed import unwrap
from oasis_gen.inferers.pixelcnn_inferer import VQVAEPixelCNNInferer
from oasis_gen.tracking.mlflow_handler import log_picture
from oasis_gen.utils.pictures import code_map_picture, reconstruction_grid, save_png, tile, to_uint8
from oasis_gen.utils.threads import sampling_threads

logger = logging.getLogger(__name__)


class ReconstructionPictures:
    """After each evaluation, save a grid of original | reconstruction | difference and log it to MLflow."""

    def __init__(self, output_dir: str | Path, run_handler: MLFlowHandler | None = None, num_images: int = 8,
                 name: str = "reconstructions"):
        self.output_dir = Path(output_dir)
        self.run_handler = run_handler
        self.num_images = int(num_images)
        self.name = name
        self.originals: list[torch.Tensor] = []
        self.reconstructions: list[torch.Tensor] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._save)

    def _reset(self, engine: Engine) -> None:
        self.originals, self.reconstructions = [], []
        self.seen = 0
        # spread the pictured slices over the whole split (under DDP: this rank's share) rather than its first few
        loader = engine.data_loader
        size = len(getattr(loader, "sampler", None) or getattr(loader, "dataset", ())) or self.num_images
        self.stride = max(size // self.num_images, 1)

    def _collect(self, engine: Engine) -> None:
        for item in engine.state.output:
            picked = self.seen % self.stride == 0 and len(self.originals) < self.num_images
            self.seen += 1
            if picked:
                self.originals.append(torch.as_tensor(item["label"]).detach().cpu())
                self.reconstructions.append(torch.as_tensor(item["pred"]).detach().cpu())

    def _save(self, engine: Engine) -> None:
        if not self.originals:
            return
        path = self.output_dir / "pictures" / f"{self.name}_epoch{engine.state.epoch:03d}.png"
        picture = reconstruction_grid(self.originals, self.reconstructions)
        save_png(picture, path)
        log_picture(self.run_handler, path, picture, self.name, engine.state.epoch)


class PriorSamples:
    """After each validation, draw code grids from the prior, decode them with the VQ-VAE and save a picture.

    The grids come from the incremental sampler with a fixed seed, so the pictures of successive epochs show the
    same random draws through a prior that learns. The picture (decoded samples, each with its code map below)
    goes to ``<output_dir>/pictures/<name>_epochNNN.png`` and to the MLflow run under ``<name>/``.

    Args:
        prior: the Gated PixelCNN being trained.
        vqvae: the VQ-VAE whose codes it models (decoded in eval mode, without gradients).
        output_dir: the run's output folder.
        grid_size: side of the code grids.
        num_samples: grids drawn each time (0: none).
        temperature: sampling temperature (``< 1`` sharper, ``> 1`` more diverse).
        num_classes: for a conditional prior, the number of slice-position buckets; the samples are spread
            evenly over them. None for an unconditional prior.
        seed: seed of the sampler's random generator.
        run_handler: the MLFlowHandler whose run receives the pictures (None: files only).
        name: file name prefix and artifact folder.
        columns: samples per row of the picture.
        cond: for the bottom prior of a two-level VQ-VAE, the top code grids ``[num_samples, h, w]`` it draws the
            bottom codes under (e.g. those of validation slices); the pictures decode both levels.
    """

    def __init__(self, prior: nn.Module, vqvae: nn.Module, output_dir: str | Path, grid_size: int,
                 num_samples: int = 8, temperature: float = 1.0, num_classes: int | None = None, seed: int = 0,
                 run_handler: MLFlowHandler | None = None, name: str = "samples", columns: int = 8,
                 cond: torch.Tensor | None = None):
        self.prior = prior
        self.vqvae = vqvae
        self.output_dir = Path(output_dir)
        self.grid_size = int(grid_size)
        self.num_samples = int(num_samples)
        self.temperature = float(temperature)
        self.num_classes = int(num_classes) if num_classes else None
        self.seed = int(seed)
        self.run_handler = run_handler
        self.name = name
        self.columns = max(int(columns), 1)
        self.cond = None if cond is None else torch.as_tensor(cond).long()
        if self.cond is not None and len(self.cond) < self.num_samples:
            self.num_samples = len(self.cond)  # as many pictures as top grids to draw under

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def labels(self) -> torch.Tensor | None:
        """Slice-position buckets of the samples, spread evenly from the first to the last (None: unconditional)."""
        if self.num_classes is None:
            return None
        return torch.arange(self.num_samples) * self.num_classes // self.num_samples

    def draw(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample code grids and decode them: ``(images [N, 1, H, W] in [0, 1], codes [N, g, g])`` on the CPU."""
        prior = unwrap(self.prior)
        device = next(prior.parameters()).device
        generator = torch.Generator(device=device).manual_seed(self.seed)
        with sampling_threads(device):
            cond = None if self.cond is None else self.cond[:self.num_samples].to(device)
            images, codes = VQVAEPixelCNNInferer().sample(unwrap(self.vqvae), prior, self.num_samples,
                                                          (self.grid_size, self.grid_size), self.temperature,
                                                          generator, self.labels(), cond=cond)
        if isinstance(codes, tuple):  # (top, bottom): the pictures show the bottom codes the prior drew
            codes = codes[1]
        return images.cpu(), codes.cpu()

    def __call__(self, engine: Engine) -> None:
        if self.num_samples < 1:
            return
        images, codes = self.draw()
        num_embeddings = int(unwrap(self.prior).num_embeddings)
        path = self.output_dir / "pictures" / f"{self.name}_epoch{engine.state.epoch:03d}.png"
        picture = samples_grid(images, codes, num_embeddings, self.columns)
        save_png(picture, path)
        log_picture(self.run_handler, path, picture, self.name, engine.state.epoch)
        logger.info("%d prior samples drawn at temperature %g: %s", self.num_samples, self.temperature, path)


def samples_grid(images: torch.Tensor, codes: torch.Tensor, num_embeddings: int, columns: int = 8) -> np.ndarray:
    """An RGB picture of decoded samples, in rows of ``columns``, each row followed by the samples' code maps."""
    cells: list[np.ndarray] = []
    columns = max(1, min(int(columns), len(images)))
    for start in range(0, len(images), columns):
        chunk = range(start, min(start + columns, len(images)))
        pictures = [np.repeat(to_uint8(images[i])[..., None], 3, axis=2) for i in chunk]
        height, width = pictures[0].shape[:2]
        maps = [_stretch(code_map_picture(codes[i], num_embeddings, scale=1), height, width) for i in chunk]
        blank = [np.full_like(pictures[0], 255)] * (columns - len(pictures))
        cells += pictures + blank + maps + blank
    return tile(cells, columns=columns)


def _stretch(picture: np.ndarray, height: int, width: int) -> np.ndarray:
    """Enlarge a small picture to height x width by repeating its pixels (nearest neighbour)."""
    rows = np.arange(height) * picture.shape[0] // height
    cols = np.arange(width) * picture.shape[1] // width
    return picture[rows][:, cols]
