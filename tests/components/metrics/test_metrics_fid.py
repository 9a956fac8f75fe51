"""FID: the Fréchet distance against scipy, streamed statistics, caching, the FID Inception-v3 and
its weight loading, extractor names, and the Inception Score on cases with known values."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from components.metrics.fid import (
    ClipImageExtractor,
    FeatureStatistics,
    InceptionExtractor,
    cached_reference_statistics,
    compute_statistics,
    fid_from_statistics,
    frechet_distance,
    inception_score,
)
from components.metrics.inception import FIDInceptionV3


def scipy_fid(mu1, s1, mu2, s2) -> float:
    """pytorch-fid's computation: scipy.linalg.sqrtm of the product."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


def gaussian_sets(d: int, n: int, seed: int):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, d))
    b = rng.normal(loc=0.2, size=(n, d)) @ (np.eye(d) + 0.3 * rng.normal(size=(d, d)) / np.sqrt(d))
    return a, b


@pytest.mark.parametrize("d,n", [(16, 300), (64, 1000), (256, 2000)])
def test_frechet_distance_matches_scipy_sqrtm(d, n):
    a, b = gaussian_sets(d, n, seed=d)
    args = (a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    ours, ref = frechet_distance(*args), scipy_fid(*args)
    assert ref > 1.0
    # float64 on both sides: eigh and sqrtm's Schur form err by ~d * 2^-52 * |S| (6e-14 |S| at d = 256),
    # amplified by 1 / (2 sqrt(lambda_min)) ~ 1 for these well-sampled sets: 1e-6 leaves 10^4 of room
    # for that, while a wrong term (a missing trace, a swapped covariance) moves the distance by O(1).
    assert abs(ours - ref) / ref < 1e-6


def test_frechet_distance_of_identical_sets_is_zero_even_when_singular():
    a, _ = gaussian_sets(128, 40, seed=1)  # fewer samples than dimensions: singular covariance
    mu, sigma = a.mean(0), np.cov(a, rowvar=False)
    # The 89 null eigenvalues come out of eigh as +-d * 2^-52 * |S| and their square roots count:
    # 2 * 89 * sqrt(128 * 2^-52) |S| = 3e-5 |S| <= 3e-5 Tr(S), under the 1e-4 Tr(S) allowed.
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-4 * np.trace(sigma)


def test_frechet_distance_of_known_gaussians():
    # N(0, I) vs N(m, 4 I) in d dims: |m|^2 + d + 4d - 2 * 2d = |m|^2 + d.
    d, m = 5, np.full(5, 3.0)
    # exact inputs in float64: a few roundings of 50 (1e-14) under approx's default rel 1e-6
    assert frechet_distance(np.zeros(d), np.eye(d), m, 4 * np.eye(d)) == pytest.approx(45.0 + d)


def test_streaming_statistics_match_full_batch_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(loc=1000.0, scale=0.5, size=(1234, 32))  # large mean: naive sums would lose digits
    stats = FeatureStatistics(32, "test")
    for start in range(0, len(x), 97):
        stats.update(x[start : start + 97])
    assert stats.count == 1234
    # float64 means near 1000: each of the 13 batch merges and numpy's pairwise sum round at
    # 1000 * 2^-53 = 1e-13, so 1e-10 is ample; centred covariances (entries 0.25 and ~0.007) err by
    # ~n * 2^-53 * 0.25 = 7e-14. A sum-of-squares formula would lose 1000^2 * n * 2^-53 = 1e-7: it fails.
    np.testing.assert_allclose(stats.mean, x.mean(0), rtol=0, atol=1e-10)
    np.testing.assert_allclose(stats.covariance, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-12)


def test_statistics_save_load_roundtrip_and_shape_errors(tmp_path):
    rng = np.random.default_rng(0)
    stats = FeatureStatistics(8, "inception-pool3")
    stats.update(rng.normal(size=(50, 8)))
    path = stats.save(tmp_path / "ref.npz", dataset_version="md5:abc")
    assert [p.name for p in tmp_path.iterdir()] == ["ref.npz"]  # no temp file left behind
    loaded = FeatureStatistics.load(path)
    assert loaded.extractor == "inception-pool3" and loaded.count == 50
    np.testing.assert_array_equal(loaded.covariance, stats.covariance)  # .npz keeps every float64 bit
    with pytest.raises(ValueError, match=r"\(B, 8\)"):
        stats.update(np.zeros((3, 9)))
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        FeatureStatistics.load(tmp_path / "missing.npz")


def test_pytorch_fid_stats_file_without_extractor_loads_as_inception(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 4))
    np.savez(tmp_path / "pytorch_fid.npz", mu=x.mean(0), sigma=np.cov(x, rowvar=False))
    loaded = FeatureStatistics.load(tmp_path / "pytorch_fid.npz")
    assert loaded.extractor == "inception-pool3"
    np.testing.assert_array_equal(loaded.covariance, np.cov(x, rowvar=False))  # read back bit for bit
    with pytest.raises(ValueError, match="cannot be extended"):
        loaded.update(x)


def test_fid_refuses_to_mix_extractors():
    rng = np.random.default_rng(0)
    a, b = FeatureStatistics(4, "inception-pool3"), FeatureStatistics(4, "clip:tiny")
    a.update(rng.normal(size=(10, 4)))
    b.update(rng.normal(size=(10, 4)))
    with pytest.raises(ValueError, match="different extractors"):
        fid_from_statistics(a, b)


def test_fid_inception_state_dict_has_pytorch_fid_layout():
    model = FIDInceptionV3()
    state = model.state_dict()
    # Keys of pytorch-fid's pt_inception-2015-12-05 file (torchvision names, 1008-way fc, no AuxLogits).
    assert state["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert state["Mixed_5b.branch_pool.conv.weight"].shape == (32, 192, 1, 1)
    assert state["Mixed_6e.branch7x7dbl_5.conv.weight"].shape == (192, 192, 1, 7)
    assert state["Mixed_7c.branch3x3dbl_3b.bn.running_var"].shape == (384,)
    assert state["fc.weight"].shape == (1008, 2048)
    assert not any(k.startswith("AuxLogits") for k in state)
    # torchvision's inception_v3 has 27,161,264 parameters; minus AuxLogits (3,326,696) and plus
    # 8 more classes in fc (8 * 2049) leaves the FID network's count.
    params = sum(p.numel() for p in model.parameters())
    assert params == 27_161_264 - 3_326_696 + 8 * 2049


def test_fid_inception_loads_weights_strictly_and_names_the_file_on_mismatch(tmp_path):
    source = FIDInceptionV3()
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    good = tmp_path / "pt_inception-2015-12-05-test.pth"
    torch.save(state, good)
    loaded = FIDInceptionV3.from_file(good)
    assert loaded.name == "inception-pool3"
    for key, value in state.items():
        assert torch.equal(loaded.state_dict()[key], value), key

    bad = tmp_path / "torchvision_inception.pth"
    torch.save({k: v for k, v in state.items() if k.startswith("Conv2d_")}, bad)
    with pytest.raises(ValueError, match="torchvision_inception.pth"):
        FIDInceptionV3.from_file(bad)


def _colour_images(colours, size=48):
    return [Image.new("RGB", (size, size), c) for c in colours]


def test_fid_over_images_zero_for_same_set_positive_for_different(tiny_clip_dir):
    rng = np.random.default_rng(0)
    set_a = [Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)) for _ in range(10)]
    set_b = _colour_images([(25 * i, 200 - 15 * i, 30 + 20 * i) for i in range(10)])
    extractor = ClipImageExtractor(tiny_clip_dir)
    assert extractor.name == "clip:tiny-clip"
    seen = []
    stats_a = compute_statistics(set_a, extractor, batch_size=4, progress=seen.append)
    assert seen == [4, 4, 2] and stats_a.dim == 16 and stats_a.count == 10
    stats_a2 = compute_statistics(set_a[::-1], extractor, batch_size=10)
    stats_b = compute_statistics(set_b, extractor, batch_size=10)
    same = fid_from_statistics(stats_a, stats_a2)
    different = fid_from_statistics(stats_a, stats_b)
    assert same.key == "fid[clip:tiny-clip]"
    assert abs(same.value) < 1e-6 * different.value
    assert different.value > 0


def test_reference_statistics_are_cached_per_dataset_version_and_extractor(tmp_path, tiny_clip_dir):
    images = _colour_images([(i * 40, 255 - i * 40, 128) for i in range(5)], size=32)
    extractor = ClipImageExtractor(tiny_clip_dir)
    listed = []

    def list_images():
        listed.append(1)
        return images

    stats, hit = cached_reference_statistics(list_images, extractor, tmp_path, "md5:1234")
    assert not hit and listed == [1]
    (cache_file,) = tmp_path.glob("*.npz")
    assert cache_file.name == "md5_1234__clip_tiny-clip.npz"
    again, hit = cached_reference_statistics(list_images, extractor, tmp_path, "md5:1234")
    assert hit and listed == [1]  # the images were not even listed on a cache hit
    np.testing.assert_array_equal(again.covariance, stats.covariance)  # the cached file, bit for bit
    _, hit = cached_reference_statistics(list_images, extractor, tmp_path, "md5:5678")
    assert not hit and len(list(tmp_path.glob("*.npz"))) == 2


def test_clip_extractor_needs_the_image_processor_config(tmp_path, tiny_clip_dir):
    import shutil

    folder = tmp_path / "no-processor"
    shutil.copytree(tiny_clip_dir, folder)
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        ClipImageExtractor(folder)


def test_inception_score_known_cases():
    n, k = 100, 10
    uniform = np.zeros((n, k))
    # float64 throughout: KL terms of ~1e-16 and exp(1e-16); approx's rel 1e-6 and the abs 1e-6 below are
    # 10^9 above that rounding and 10^5 below any real difference (IS moves by 1 per confident class).
    assert inception_score(uniform, splits=5)[0] == pytest.approx(1.0)
    # Confident, and every class equally often: p(y) uniform, KL = log k for each image.
    confident = np.full((n, k), -50.0)
    confident[np.arange(n), np.arange(n) % k] = 50.0
    mean, std = inception_score(confident, splits=5)
    assert mean == pytest.approx(k, rel=1e-6) and std == pytest.approx(0.0, abs=1e-6)
    # Confident but always the same class: p(y) = p(y|x), IS = 1.
    mode_collapse = np.zeros((n, k))
    mode_collapse[:, 3] = 50.0
    assert inception_score(mode_collapse, splits=2)[0] == pytest.approx(1.0, abs=1e-6)


def test_random_inception_features_logits_and_inception_score():
    extractor = InceptionExtractor()
    assert extractor.name == "inception-pool3:random-init"
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, 40, 3), dtype=np.uint8)) for h in (24, 56)]
    sink: list[np.ndarray] = []
    seen = []
    stats = compute_statistics(images, extractor, batch_size=2, progress=seen.append, logits_sink=sink)
    assert seen == [2]  # images of different sizes share a batch: each is resized to 299
    assert stats.dim == 2048 and stats.count == 2 and stats.extractor == "inception-pool3:random-init"
    assert np.isfinite(stats.mean).all() and stats.mean.std() > 0.01
    logits = np.concatenate(sink)
    assert logits.shape == (2, 1008)
    mean, _ = inception_score(logits, splits=1)
    assert 1.0 <= mean <= 2.0  # IS is bounded by the number of images per split
