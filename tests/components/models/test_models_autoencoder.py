"""The shared latent autoencoder: shapes, latent scaling, the LDM loss, overfitting, save/load."""

import random

import numpy as np
import pytest
import torch

from components.data.scene import render_scene, sample_scene
from components.models.autoencoder import (
    AutoencoderConfig,
    AutoencoderWithLoss,
    PatchDiscriminator,
    adaptive_adversarial_weight,
    adversarial_generator_loss,
    autoencoder_loss,
    build_autoencoder,
    build_discriminator,
    compute_scaling_factor,
    decode_latents,
    decoder_last_layer,
    discriminator_loss,
    encode_latents,
    hinge_discriminator_loss,
    images_to_pixels,
    latent_shape,
    load_autoencoder,
    pixels_to_images,
    roundtrip_faithfulness,
    save_autoencoder,
    set_scaling_factor,
    sobel_gradients,
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
        ({"discriminator_start": -1}, "discriminator_start"),
        ({"discriminator_layers": 0}, "discriminator_layers"),
        ({"edge_weight": -0.1}, "edge_weight"),
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
            # scaling by 0.25 (and back by 4) is exact in binary floating point: equal, not close
            assert torch.equal(encode_latents(vae, pixels), unscaled * 0.25)
            # a posterior sample is what LDM trains on; it is seeded by the generator
            first = encode_latents(vae, pixels, generator=torch.Generator().manual_seed(0))
            again = encode_latents(vae, pixels, generator=torch.Generator().manual_seed(0))
            # a posterior sample differs from the mean by sigma * eps, O(0.1), far outside allclose's rtol 1e-5
            assert torch.equal(first, again) and not torch.allclose(first, unscaled * 0.25)
            assert torch.equal(decode_latents(vae, unscaled * 0.25), vae.decode(unscaled).sample.clamp(-1, 1))
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
        together = vae.encode(pixels[:10]).latent_dist.sample(torch.Generator().manual_seed(0))
    # An fp32 std of N values: the sum of N squares is within N * 2^-24 relative (Higham's recursive-sum
    # bound), halved by the square root, plus the scaling's rounding: rel N * 2^-24 covers it.
    assert (samples * factor).std().item() == pytest.approx(1.0, rel=samples.numel() * 2.0**-24)
    with torch.no_grad():
        only_ten = compute_scaling_factor(vae, [pixels[:10]], max_images=10, generator=torch.Generator().manual_seed(0))
    # Encoding 10 images at once rounds differently from 5 + 5 (the convolutions block differently); a std
    # moves by at most the rms of the difference, |std(a) - std(b)| <= rms(a - b) (N/(N-1) ~ 1), so the
    # factor 1/std by at most rms * factor relative. Two more images would move it by percents.
    rms = (together - samples).double().pow(2).mean().sqrt().item()
    assert only_ten == pytest.approx(factor, rel=1.01 * rms * factor + 1e-12)
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
    assert set(l1) == {"loss", "reconstruction", "kl", "reconstructed"}
    # The same draws through the same fp32 ops in the same order as written out here: bit for bit.
    assert torch.equal(l1["reconstructed"], vae.decode(z).sample)
    assert torch.equal(l1["reconstruction"], error.abs().mean())
    assert torch.equal(l2["reconstruction"], error.pow(2).mean())
    assert torch.equal(l1["kl"], posterior.kl().mean())
    assert torch.equal(l1["loss"], l1["reconstruction"] + 1e-3 * l1["kl"] / pixels[0].numel())
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
    assert loaded.config.scaling_factor == 0.4  # a JSON float round-trips exactly (repr is shortest-exact)
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


def test_edge_term_is_the_l1_between_sobel_gradients(vae):
    pixels = scene_pixels(2)
    flat = torch.zeros(1, 3, 8, 8)
    assert sobel_gradients(flat).abs().max() == 0
    step = torch.zeros(1, 1, 4, 4)
    step[..., 2:] = 1.0
    assert sobel_gradients(step)[0, 0, 1].tolist() == [0.0, 0.5, 0.5, 0.0]  # a vertical edge, x-gradient only
    with torch.no_grad():
        plain = autoencoder_loss(vae, pixels, kl_weight=0.0, generator=torch.Generator().manual_seed(0))
        edged = autoencoder_loss(vae, pixels, kl_weight=0.0, edge_weight=0.5, generator=torch.Generator().manual_seed(0))
    edge = (sobel_gradients(plain["reconstructed"]) - sobel_gradients(pixels)).abs().mean()
    torch.testing.assert_close(edged["edge"], edge)
    torch.testing.assert_close(edged["reconstruction"], plain["reconstruction"] + 0.5 * edge)


def test_discriminator_is_off_before_its_start_step_and_on_after():
    cfg = AutoencoderConfig(discriminator_weight=0.5, discriminator_start=3)
    assert [cfg.discriminator_active(step) for step in range(5)] == [False, False, False, True, True]
    off = AutoencoderConfig(discriminator_weight=0.0, discriminator_start=0)
    assert not off.uses_discriminator and not off.discriminator_active(100)
    with pytest.raises(ValueError, match="discriminator_weight"):
        build_discriminator(off)


def test_patch_discriminator_gives_a_logit_per_patch():
    torch.manual_seed(0)
    for layers, side in [(1, 30), (2, 14), (3, 6)]:
        logits = PatchDiscriminator(3, 8, layers)(torch.zeros(2, 3, 64, 64))
        assert logits.shape == (2, 1, side, side), layers


def test_hinge_loss_on_known_logits():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.5])
    # real: relu(1 - 2) = 0, relu(1 - 0.5) = 0.5; fake: relu(1 - 2) = 0, relu(1 + 0.5) = 1.5
    assert hinge_discriminator_loss(real, fake).item() == pytest.approx(0.5 * (0.25 + 0.75))
    assert hinge_discriminator_loss(torch.full((3,), 1.0), torch.full((3,), -1.0)).item() == 0.0  # beyond the margins


def test_adaptive_weight_is_the_ratio_of_gradient_norms_at_the_last_layer():
    last = torch.ones(3, requires_grad=True)
    a, b = torch.tensor([3.0, 0.0, 4.0]), torch.tensor([0.0, 1.0, 0.0])
    weight = adaptive_adversarial_weight((last * a).sum(), (last * b).sum(), last, scale=0.5)
    assert weight.item() == pytest.approx(0.5 * 5.0 / (1.0 + 1e-4))
    assert not weight.requires_grad
    # a generator term ten times larger gets a ten times smaller weight: the balance does not depend on units
    tenfold = adaptive_adversarial_weight((last * a).sum(), 10 * (last * b).sum(), last, scale=0.5)
    assert tenfold.item() == pytest.approx(weight.item() / 10, rel=1e-3)


def test_adversarial_term_trains_the_decoder_and_not_the_discriminator():
    torch.manual_seed(0)
    cfg = AutoencoderConfig(**{**TINY.__dict__, "discriminator_weight": 0.5, "discriminator_layers": 2,
                               "discriminator_channels": 8})
    model = AutoencoderWithLoss(build_autoencoder(cfg), cfg)
    discriminator = build_discriminator(cfg)
    pixels = scene_pixels(2)
    losses = model(pixels, generator=torch.Generator().manual_seed(0))
    adversarial = adversarial_generator_loss(discriminator, losses["reconstructed"], losses["reconstruction"],
                                             decoder_last_layer(model.vae), cfg.discriminator_weight)
    assert adversarial["adversarial_weight"] > 0
    (losses["loss"] + adversarial["loss"]).backward()
    assert decoder_last_layer(model.vae).grad.abs().sum() > 0
    assert all(p.grad is None and p.requires_grad for p in discriminator.parameters())
    # the discriminator's own loss reaches its weights and not the autoencoder's
    model.zero_grad(set_to_none=True)
    terms = discriminator_loss(discriminator, pixels, losses["reconstructed"])
    terms["discriminator"].backward()
    assert all(p.grad is not None for p in discriminator.parameters())
    assert all(p.grad is None for p in model.parameters())


def test_roundtrip_faithfulness_reads_ground_truth_scenes(vae):
    rng = random.Random(0)
    scenes = [sample_scene(rng, 1, 2) for _ in range(3)]
    pixels = images_to_pixels([render_scene(scene, 32) for scene in scenes])
    groundtruth = [{"scene": scene.to_json()} for scene in scenes[:2]] + [None]
    through_vae, real = roundtrip_faithfulness(vae, pixels, groundtruth)
    assert real.images == through_vae.images == 2
    assert real.objects == sum(len(s.objects) for s in scenes[:2])
    assert 0 <= through_vae.all_precision <= real.all_precision
    with pytest.raises(ValueError, match="ground-truth scene"):
        roundtrip_faithfulness(vae, pixels, [None, None, None])
