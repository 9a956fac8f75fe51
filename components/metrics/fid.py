"""Fréchet distance between feature Gaussians (FID), with pluggable feature extractors.

FID (Heusel et al. 2017) fits a Gaussian to the features of each image set and reports

    d^2 = |mu_1 - mu_2|^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))

The papers use Inception pool3 features (ParaDiffusion 4.1 "FID-30K", MiniGPT-5 4.2.2, VLAD IV-B).
Features from different networks give numbers on different scales, so every statistic and every
FID carries its extractor's name (`fid[inception-pool3]`, `fid[clip:<model folder>]`) and mixing
two extractors is an error.

Statistics are streamed: a batch at a time, merged into a running mean and scatter matrix in
float64 (Chan et al.'s pairwise update), so 30k images never sit in memory. Reference statistics
can be cached as `.npz` per (dataset version, extractor).
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from components.fileio import atomic_write_bytes
from components.metrics.inception import FID_INPUT_SIZE, FIDInceptionV3
from components.metrics.loading import ImageLike, load_clip_model, load_rgb

logger = logging.getLogger(__name__)


class FeatureExtractor(Protocol):
    """What FID needs from a network: a name, a preprocessing step and a batched forward."""

    name: str

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """One RGB PIL image -> the (3, h, w) tensor the network's `features` takes."""
        ...

    def features(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) -> (B, D) features."""
        ...


class InceptionExtractor:
    """pool3 features of the FID Inception-v3 (pytorch-fid's preprocessing: [0, 1], bilinear 299x299)."""

    def __init__(self, model: FIDInceptionV3 | None = None, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = (model or FIDInceptionV3()).to(self.device).eval()
        self.name = self.model.name

    @classmethod
    def from_file(cls, weights: str | Path, device: str | torch.device = "cpu") -> InceptionExtractor:
        return cls(FIDInceptionV3.from_file(weights), device)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(
            2, 0, 1
        )  # (3, H, W)
        # Resizing one image at a time gives the same result as pytorch-fid's batched
        # F.interpolate, and lets images of different sizes share a batch.
        return F.interpolate(
            x[None], size=(FID_INPUT_SIZE, FID_INPUT_SIZE), mode="bilinear", align_corners=False
        )[0]

    @torch.no_grad()
    def features(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model.pool3(batch.to(self.device)).cpu()  # (B, 2048)

    @torch.no_grad()
    def features_and_logits(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pool3 features and the 1008-way logits, for FID and the Inception Score in one pass."""
        pool = self.model.pool3(batch.to(self.device))  # (B, 2048)
        return pool.cpu(), self.model.logits(pool).cpu()  # (B, 2048), (B, 1008)


class ClipImageExtractor:
    """Projected image embeddings of a CLIP image tower loaded with `from_pretrained` from a local path.

    The folder must hold a CLIP model (`CLIPModel` or `CLIPVisionModelWithProjection`) and its
    `preprocessor_config.json` (or be a genops clip_evaluator folder); the extractor is named
    `clip:<folder name>`.
    """

    def __init__(self, model_path: str | Path, device: str | torch.device = "cpu") -> None:
        path = Path(model_path)
        self.model, self.processor = load_clip_model(path, vision_only=True)
        self.device = torch.device(device)
        self.model.to(self.device).eval()
        self.name = f"clip:{path.resolve().name}"

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        pixels = self.processor(images=[image.convert("RGB")], return_tensors="pt")["pixel_values"]
        return pixels[0]  # (3, h, w)

    @torch.no_grad()
    def features(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.device)
        if hasattr(self.model, "get_image_features"):
            return self.model.get_image_features(pixel_values=batch).pooler_output.cpu()  # (B, D)
        return self.model(pixel_values=batch).image_embeds.cpu()  # (B, D)


class FeatureStatistics:
    """Running mean and covariance of feature vectors, merged batch by batch in float64.

    Chan, Golub & LeVeque's pairwise update: merging a batch with mean m_b and scatter C_b into the
    running (n, mean, M2) adds C_b + delta delta^T n n_b / (n + n_b), delta = m_b - mean. Unlike
    sum-of-outer-products it does not lose precision when the mean is large next to the spread.
    """

    def __init__(self, dim: int, extractor: str) -> None:
        self.dim = dim
        self.extractor = extractor
        self.count = 0
        self.mean = np.zeros(dim, dtype=np.float64)
        self._scatter = np.zeros((dim, dim), dtype=np.float64)
        self._fixed_covariance: np.ndarray | None = None

    def update(self, features: np.ndarray | torch.Tensor) -> None:
        """Fold a (B, D) batch of features into the statistics."""
        if isinstance(features, torch.Tensor):
            features = features.detach().cpu().numpy()
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected features of shape (B, {self.dim}), got {x.shape}")
        if self._fixed_covariance is not None:
            raise ValueError("these statistics were loaded without an image count and cannot be extended")
        nb = x.shape[0]
        if nb == 0:
            return
        batch_mean = x.mean(axis=0)  # (D,)
        centred = x - batch_mean  # (B, D)
        batch_scatter = centred.T @ centred  # (D, D)
        delta = batch_mean - self.mean
        total = self.count + nb
        self._scatter += batch_scatter + np.outer(delta, delta) * (self.count * nb / total)
        self.mean += delta * (nb / total)
        self.count = total

    @property
    def covariance(self) -> np.ndarray:
        """Unbiased (n - 1) covariance, as np.cov and pytorch-fid."""
        if self._fixed_covariance is not None:
            return self._fixed_covariance
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 feature vectors, got {self.count}")
        return self._scatter / (self.count - 1)

    def save(self, path: str | Path, dataset_version: str = "") -> Path:
        """Write mu, sigma, count, extractor and dataset version to an .npz, atomically."""
        buffer = io.BytesIO()
        np.savez(buffer, mu=self.mean, sigma=self.covariance, count=np.int64(self.count),
                 extractor=np.str_(self.extractor), dataset_version=np.str_(dataset_version))
        return atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> FeatureStatistics:
        """Read statistics written by `save` (or pytorch-fid's `--save-stats` .npz, extractor `inception-pool3`)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"statistics file {path} does not exist")
        with np.load(path) as data:
            if "mu" not in data or "sigma" not in data:
                raise ValueError(
                    f"statistics file {path} lacks 'mu' / 'sigma' arrays (has {sorted(data.files)})"
                )
            mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
            if "extractor" in data:
                extractor = str(data["extractor"])
            else:
                logger.warning(
                    "statistics file %s names no extractor; assuming pytorch-fid's inception-pool3", path
                )
                extractor = "inception-pool3"
            count = int(data["count"]) if "count" in data else 0
        if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
            raise ValueError(f"statistics file {path}: mu {mu.shape} and sigma {sigma.shape} do not fit")
        stats = cls(mu.shape[0], extractor)
        stats.mean = mu
        stats.count = count
        if count >= 2:
            stats._scatter = sigma * (count - 1)
        else:
            stats._fixed_covariance = sigma  # pytorch-fid files carry no count: sigma is all there is
        return stats


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """d^2 = |mu1 - mu2|^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^(1/2)).

    Tr((S1 S2)^(1/2)) is the sum of square roots of the eigenvalues of S1 S2, which are those of the
    symmetric PSD matrix A S2 A with A = S1^(1/2) (XY and YX share their spectrum). Two symmetric
    eigendecompositions are faster and better conditioned than scipy.linalg.sqrtm of the
    non-symmetric product, and stay real when the covariances are singular (fewer images than
    feature dimensions).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = (
        np.atleast_2d(np.asarray(sigma1, np.float64)),
        np.atleast_2d(np.asarray(sigma2, np.float64)),
    )
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0],) * 2:
        raise ValueError(
            f"shapes do not fit: mu {mu1.shape} / {mu2.shape}, sigma {sigma1.shape} / {sigma2.shape}"
        )
    if not (
        np.isfinite(sigma1).all()
        and np.isfinite(sigma2).all()
        and np.isfinite(mu1).all()
        and np.isfinite(mu2).all()
    ):
        raise ValueError("statistics contain NaN or inf")
    w1, v1 = np.linalg.eigh((sigma1 + sigma1.T) / 2)
    sqrt_s1 = (v1 * np.sqrt(np.clip(w1, 0, None))) @ v1.T  # (D, D)
    inner = sqrt_s1 @ sigma2 @ sqrt_s1
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    tr_covmean = np.sqrt(np.clip(eig, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def _batches(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def compute_statistics(
    images: Sequence[ImageLike],
    extractor: FeatureExtractor,
    batch_size: int = 50,
    progress: Callable[[int], None] | None = None,
    logits_sink: list[np.ndarray] | None = None,
) -> FeatureStatistics:
    """Stream `images` (PIL images or paths) through `extractor` into feature statistics.

    `progress(n)` is called after every batch with the number of images it held. With an
    `InceptionExtractor`, `logits_sink` collects each batch's 1008-way logits for the Inception Score.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not len(images):
        raise ValueError("no images to compute statistics on")
    if logits_sink is not None and not isinstance(extractor, InceptionExtractor):
        raise ValueError(f"logits for the Inception Score need the Inception extractor, not {extractor.name}")
    stats: FeatureStatistics | None = None
    for chunk in _batches(images, batch_size):
        batch = torch.stack([extractor.preprocess(load_rgb(im)) for im in chunk])  # (B, 3, h, w)
        if logits_sink is not None:
            feats, logits = extractor.features_and_logits(batch)
            logits_sink.append(logits.numpy())
        else:
            feats = extractor.features(batch)  # (B, D)
        if stats is None:
            stats = FeatureStatistics(feats.shape[1], extractor.name)
        stats.update(feats)
        if progress is not None:
            progress(len(chunk))
    assert stats is not None
    return stats


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "_"


def reference_statistics_path(cache_dir: str | Path, dataset_version: str, extractor_name: str) -> Path:
    """Where the cached reference statistics of (dataset version, extractor) live."""
    return Path(cache_dir) / f"{_slug(dataset_version)}__{_slug(extractor_name)}.npz"


def cached_reference_statistics(
    images: Sequence[ImageLike] | Callable[[], Sequence[ImageLike]],
    extractor: FeatureExtractor,
    cache_dir: str | Path,
    dataset_version: str,
    batch_size: int = 50,
    progress: Callable[[int], None] | None = None,
) -> tuple[FeatureStatistics, bool]:
    """Reference statistics for a dataset version, read from the cache or computed and cached.

    `images` may be a callable so the reference images are only listed on a cache miss. Returns
    the statistics and whether they came from the cache. A cache file whose recorded extractor or
    dataset version differs from the request is an error, never silently reused.
    """
    if not dataset_version:
        raise ValueError("dataset_version must be non-empty: it keys the reference-statistics cache")
    path = reference_statistics_path(cache_dir, dataset_version, extractor.name)
    if path.is_file():
        stats = FeatureStatistics.load(path)
        with np.load(path) as data:
            recorded_version = str(data["dataset_version"]) if "dataset_version" in data else ""
        if stats.extractor != extractor.name or recorded_version != dataset_version:
            raise ValueError(
                f"cache file {path} holds statistics for ({recorded_version!r}, {stats.extractor!r}), "
                f"not ({dataset_version!r}, {extractor.name!r}); delete it"
            )
        logger.info("reference statistics for %s / %s read from %s", dataset_version, extractor.name, path)
        return stats, True
    listed = images() if callable(images) else images
    stats = compute_statistics(listed, extractor, batch_size=batch_size, progress=progress)
    stats.save(path, dataset_version=dataset_version)
    logger.info("reference statistics for %s / %s cached at %s", dataset_version, extractor.name, path)
    return stats, False


@dataclass(frozen=True)
class FidResult:
    """One FID value with the extractor that defines its scale and the set sizes."""

    value: float
    extractor: str
    count_generated: int
    count_reference: int

    @property
    def key(self) -> str:
        """The metric name to log: `fid[<extractor>]`."""
        return f"fid[{self.extractor}]"

    def to_json(self) -> dict:
        return {
            "metric": self.key,
            "value": self.value,
            "extractor": self.extractor,
            "count_generated": self.count_generated,
            "count_reference": self.count_reference,
        }


def fid_from_statistics(generated: FeatureStatistics, reference: FeatureStatistics) -> FidResult:
    """FID between two sets of statistics computed with the same extractor."""
    if generated.extractor != reference.extractor:
        raise ValueError(
            f"statistics come from different extractors ({generated.extractor!r} vs {reference.extractor!r}); "
            "FIDs from different feature spaces are not comparable"
        )
    value = frechet_distance(generated.mean, generated.covariance, reference.mean, reference.covariance)
    return FidResult(value, generated.extractor, generated.count, reference.count)


def inception_score(logits: np.ndarray | torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """Inception Score exp(E_x KL(p(y|x) || p(y))) (Salimans et al. 2016): mean and std over splits.

    `logits` are (N, C) classifier logits, e.g. `FIDInceptionV3.logits` (1008 classes). As in the
    original code, p(y) is the marginal within each of `splits` equal chunks.
    """
    if isinstance(logits, torch.Tensor):
        logits = logits.detach().cpu().numpy()
    x = np.asarray(logits, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected logits of shape (N, C), got {x.shape}")
    if not 1 <= splits <= x.shape[0]:
        raise ValueError(f"splits must be in [1, N={x.shape[0]}], got {splits}")
    log_p = x - x.max(axis=1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(axis=1, keepdims=True))  # (N, C) log p(y|x)
    p = np.exp(log_p)
    scores = []
    for part_p, part_log_p in zip(np.array_split(p, splits), np.array_split(log_p, splits)):
        log_py = np.log(part_p.mean(axis=0, keepdims=True) + 1e-300)  # (1, C) log p(y)
        kl = (part_p * (part_log_p - log_py)).sum(axis=1)  # (n,)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))
