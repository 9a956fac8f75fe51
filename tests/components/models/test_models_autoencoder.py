"""The shared latent autoencoder: shapes, latent scaling, the LDM loss, overfitting, save/load."""

import random

import numpy as np
import pytest
import torch

from components.data.scene import render_scene, sample_scene
from components.models.autoencoder import (
    AutoencoderConfig,
    AutoencoderWithLoss,
    autoencoder_loss,
    build_autoencoder,
    compute_scaling_factor,
    decode_latents,
    encode_latents,
    images_to_pixels,
    latent_shape,
    load_autoencoder,
    pixels_to_images,
    save_autoencoder,
    set_scaling_factor,
)

TINY = AutoencoderConfig(sample_size=32, block_out_channels=(16, 32, 32), norm_num_groups=8)


def scene_pixels(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    rng = random.Random(seed)
    return images_to_pixels([render_scene(sample_scene(rng, 1, 3), size) for _ in range(n)])


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return build_autoencoder(TINY).eval()


@pytest.mark.parametrize(
    "values, field",
    [
        ({"block_out_channels": (16, 30)}, "norm_num_groups"),
        ({"sample_size": 30}, "sample_size"),
        ({"kl_weight": -1.0}, "kl_weight"),
        ({"block_out_channels": ()}, "block_out_channels"),
    ],
)
def test_config_errors_name_the_field(values, field):
    with pytest.raises(ValueError, match=field):
        AutoencoderConfig(**values)


def test_encode_decode_shapes(vae):
    pixels = scene_pixels(3)
    assert latent_shape(vae) == (4, 8, 8) == (TINY.latent_channels, TINY.latent_size, TINY.latent_size)
    with torch.no_grad():
        latents = encode_latents(vae, pixels)
        images = decode_latents(vae, latents)
    assert latents.shape == (3, 4, 8, 8)
    assert images.shape == pixels.shape and images.min() >= -1 and images.max() <= 1


def test_latents_are_scaled_by_the_stored_factor(vae):
    pixels = scene_pixels(2)
    with torch.no_grad():
        unscaled = vae.encode(pixels).latent_dist.mode()
        set_scaling_factor(vae, 0.25)
        try:
            torch.testing.assert_close(encode_latents(vae, pixels), unscaled * 0.25)
            # a posterior sample is what LDM trains on; it is seeded by the generator
            first = encode_latents(vae, pixels, generator=torch.Generator().manual_seed(0))
            again = encode_latents(vae, pixels, generator=torch.Generator().manual_seed(0))
            assert torch.equal(first, again) and not torch.allclose(first, unscaled * 0.25)
            torch.testing.assert_close(decode_latents(vae, unscaled * 0.25), vae.decode(unscaled).sample.clamp(-1, 1))
        finally:
            set_scaling_factor(vae, 1.0)
    with pytest.raises(ValueError, match="scaling_factor"):
        set_scaling_factor(vae, 0.0)


def test_scaling_factor_makes_latents_unit_variance(vae):
    pixels = scene_pixels(12)
    batches = [pixels[:5], pixels[5:10], pixels[10:]]
    with torch.no_grad():
        factor = compute_scaling_factor(vae, batches, max_images=10, generator=torch.Generator().manual_seed(0))
        # the same posterior samples, drawn in the same order, scaled: std 1 by construction
        generator = torch.Generator().manual_seed(0)
        samples = torch.cat([vae.encode(b).latent_dist.sample(generator) for b in (pixels[:5], pixels[5:10])])
    assert (samples * factor).std().item() == pytest.approx(1.0, rel=1e-4)
    with torch.no_grad():
        only_ten = compute_scaling_factor(vae, [pixels[:10]], max_images=10, generator=torch.Generator().manual_seed(0))
    assert only_ten == pytest.approx(factor, rel=1e-6)
    with pytest.raises(ValueError, match="at least 2 images"):
        compute_scaling_factor(vae, [pixels[:1]])


def test_loss_terms_combine_as_in_ldm(vae):
    pixels = scene_pixels(2)
    with torch.no_grad():
        l1 = autoencoder_loss(vae, pixels, kl_weight=1e-3, generator=torch.Generator().manual_seed(0))
        l2 = autoencoder_loss(vae, pixels, kl_weight=1e-3, reconstruction="l2", generator=torch.Generator().manual_seed(0))
        posterior = vae.encode(pixels).latent_dist
        z = posterior.sample(torch.Generator().manual_seed(0))
        error = vae.decode(z).sample - pixels
    assert set(l1) == {"loss", "reconstruction", "kl"}
    torch.testing.assert_close(l1["reconstruction"], error.abs().mean())
    torch.testing.assert_close(l2["reconstruction"], error.pow(2).mean())
    torch.testing.assert_close(l1["kl"], posterior.kl().mean())
    torch.testing.assert_close(l1["loss"], l1["reconstruction"] + 1e-3 * l1["kl"] / pixels[0].numel())
    with pytest.raises(ValueError, match="reconstruction"):
        autoencoder_loss(vae, pixels, kl_weight=0.0, reconstruction="l3")


def test_overfits_one_batch():
    torch.manual_seed(0)
    model = AutoencoderWithLoss(build_autoencoder(TINY), TINY)
    pixels = scene_pixels(4)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(20):
        terms = model(pixels, generator=torch.Generator().manual_seed(0))
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        losses.append(terms["loss"].item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.4 * losses[0], losses


def test_save_load_round_trip(vae, tmp_path):
    set_scaling_factor(vae, 0.4)
    try:
        path = save_autoencoder(vae, tmp_path / "vae")
        loaded = load_autoencoder(path).eval()
    finally:
        set_scaling_factor(vae, 1.0)
    assert loaded.config.scaling_factor == pytest.approx(0.4)
    assert (path / "config.json").is_file() and (path / "diffusion_pytorch_model.safetensors").is_file()
    pixels = scene_pixels(2)
    with torch.no_grad():
        set_scaling_factor(vae, 0.4)
        try:
            assert torch.equal(encode_latents(loaded, pixels), encode_latents(vae, pixels))
            latents = encode_latents(vae, pixels)
            assert torch.equal(decode_latents(loaded, latents), decode_latents(vae, latents))
        finally:
            set_scaling_factor(vae, 1.0)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_autoencoder(tmp_path / "missing")


def test_pixel_image_round_trip():
    images = [render_scene(sample_scene(random.Random(3), 2, 2), 32)]
    pixels = images_to_pixels(images)
    assert pixels.shape == (1, 3, 32, 32) and pixels.min() >= -1 and pixels.max() <= 1
    assert np.array_equal(np.asarray(pixels_to_images(pixels)[0]), np.asarray(images[0]))
    assert images_to_pixels(images, size=16).shape == (1, 3, 16, 16)
