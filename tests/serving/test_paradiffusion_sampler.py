"""The production sampler and the image service on a ParaDiffusion bundle: both backends draw the images of
`onnx_images` and `ParaDiffusion.generate` from the same noise, `genops generate` writes them, and the service
answers with them and refuses a prompt over the model's max_tokens.

The tiny bundle (tests/serving/conftest.py) pads to the batch's longest text, and the prompts below differ in
length, so the empty negative prompt and the shorter prompt carry padding: a sampler that dropped the UNet's
mask input, tokenized differently or padded cond and uncond apart would not draw these images.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from conftest import PARADIFFUSION_MAX_TOKENS, LiveServer, float32_tolerance, http
from PIL import Image
from typer.testing import CliRunner

pytestmark = pytest.mark.slow  # exports the tiny ParaDiffusion bundle once (~15 s idle); each test then takes 1-3 s

PROMPTS = ["There is a red circle at the top left. There is a blue square at the bottom right.",
           "There is a small green triangle in the middle."]
STEPS = 3
# 31 tokens + <s> = PARADIFFUSION_MAX_TOKENS: the longest prompt the service takes
AT_LIMIT = "There is a red circle at the top left. " * 3


@pytest.fixture(scope="module")
def samplers(paradiffusion_bundle):
    from serving.sampler import load_sampler

    return {backend: load_sampler(paradiffusion_bundle[0], backend, "cpu") for backend in ("onnx", "torch")}


def test_both_backends_draw_onnx_images_and_generate_from_the_same_noise(paradiffusion_bundle, samplers):
    from components.models.autoencoder import load_autoencoder
    from components.models.paradiffusion import ParaDiffusion
    from serving.export.families import PIXEL_LEVEL
    from serving.export.family_parity import OnnxGraphs
    from serving.export.paradiffusion import onnx_images
    from serving.sampler import SamplingSpec

    out, manifest = paradiffusion_bundle
    onnx = samplers["onnx"]
    # the bundle has no sampler.json: the model's config, the VAE's and the manifest's serving section
    assert not (out / "sampler.json").exists()
    assert onnx.spec == SamplingSpec(latent_channels=4, latent_side=4, vae_factor=2,
                                     max_length=PARADIFFUSION_MAX_TOKENS, sampler="dpmsolver++",
                                     num_inference_steps=3, guidance_scale=3.0, allowed_sides=[8])
    model = ParaDiffusion.from_pretrained(out / "pytorch").eval()  # as trained: the adapter unmerged
    _, mask = model.tokenize(["", *PROMPTS])
    assert (mask == 0).any(dim=1).tolist() == [True, False, True]  # the negative and the short prompt are padded

    noise = onnx.initial_noise(len(PROMPTS), seed=0)
    got = {backend: sampler.pixels(PROMPTS, noise=noise, steps=STEPS) for backend, sampler in samplers.items()}
    reference = onnx_images(OnnxGraphs(out / "onnx", ["text_encoder", "unet", "vae_decoder"]), model, PROMPTS, noise,
                            STEPS)
    # `sample` draws its noise as torch.randn((B, C, h, w)) from this generator, as initial_noise does from seed 0
    want = model.generate(PROMPTS, load_autoencoder(out / "pytorch" / "vae").eval(), num_inference_steps=STEPS,
                          generator=torch.Generator().manual_seed(0))
    tolerance = float32_tolerance(manifest, onnx, STEPS)
    assert tolerance < PIXEL_LEVEL
    for backend, pixels in got.items():
        assert pixels.shape == (2, 3, 8, 8)
        assert (pixels - reference).abs().max() <= tolerance, backend
        assert (pixels - want).abs().max() <= tolerance, backend
    assert got["onnx"].std() > 0.1  # a real image, not a constant

    images = [np.asarray(sampler.generate(PROMPTS[1:], seed=0, steps=STEPS)[0], np.int16) for sampler in samplers.values()]
    assert np.abs(images[0] - images[1]).max() <= 1  # generate's noise is initial_noise's: the same image


def test_a_request_draws_the_same_image_alone_or_batched(samplers):
    """The service batches requests with other prompts and negatives: the batch's longest text sets the padding,
    which the mask gives no weight."""
    sampler = samplers["onnx"]
    noise = torch.cat([sampler.initial_noise(1, 11), sampler.initial_noise(1, 12)])
    negatives = ["", "There is a blue square."]
    batched = sampler.pixels(PROMPTS, negative_prompts=negatives, noise=noise, steps=STEPS)
    alone = [sampler.pixels([p], negative_prompts=[n], noise=noise[i:i + 1], steps=STEPS)
             for i, (p, n) in enumerate(zip(PROMPTS, negatives))]
    torch.testing.assert_close(batched, torch.cat(alone), atol=1e-6, rtol=0)


def test_genops_generate_writes_the_samplers_png(paradiffusion_bundle, samplers, tmp_path):
    from orchestration.cli import app

    out = tmp_path / "x.png"
    result = CliRunner().invoke(app, ["generate", "--bundle", str(paradiffusion_bundle[0]), "--prompt", PROMPTS[0],
                                      "--prompt", PROMPTS[1], "--out", str(out), "--steps", "2", "--seed", "4"])
    assert result.exit_code == 0, result.output
    assert "onnx backend on cpu" in result.output
    want = samplers["onnx"].generate(PROMPTS, seed=4, steps=2)
    assert np.array_equal(np.asarray(Image.open(out)), np.hstack([np.asarray(i) for i in want]))


@pytest.fixture(scope="module")
def service(paradiffusion_bundle):
    from serving.http import ServiceSettings, create_app

    settings = ServiceSettings(bundle=paradiffusion_bundle[0], backend="onnx", device="cpu", max_steps=10,
                               batch_window_s=0.0, token=None)
    with LiveServer(create_app(settings)) as url:
        yield url


def test_the_service_answers_a_paradiffusion_request_with_its_png(service, samplers):
    ready = http(f"{service}/readyz").json()
    assert ready["status"] == "ready" and ready["model"] == "genops-paradiffusion-stage2 v3"
    assert samplers["onnx"].token_count(AT_LIMIT) == PARADIFFUSION_MAX_TOKENS
    reply = http(f"{service}/v1/images", {"prompt": AT_LIMIT, "steps": STEPS, "seed": 7})
    assert reply.status == 200 and reply.headers["content-type"] == "image/png", reply.body
    png = np.asarray(Image.open(io.BytesIO(reply.body)), np.int16)
    assert png.shape == (8, 8, 3)
    want = np.asarray(samplers["onnx"].generate([AT_LIMIT], seed=7, steps=STEPS)[0], np.int16)
    assert np.abs(png - want).max() <= 1


@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
def test_a_prompt_over_max_tokens_gets_422_naming_the_field(service, samplers, field):
    over = AT_LIMIT + "There is"
    tokens = samplers["onnx"].token_count(over)
    assert tokens > PARADIFFUSION_MAX_TOKENS
    reply = http(f"{service}/v1/images", {"prompt": "There is a red circle.", "steps": 2, field: over})
    assert reply.status == 422, reply.body
    [error] = reply.json()["detail"]
    assert error["loc"][-1] == field
    assert f"{tokens} tokens with <s>; the model reads at most {PARADIFFUSION_MAX_TOKENS}" in error["msg"]
