"""The production sampler and the image service on a VLAD bundle: both backends draw the images (and layouts) of
`onnx_images` and `VLAD.generate` from the same noise, `genops generate` writes the image and its layout, and the
service answers with them.

The prompts decompose into different numbers of local units (two quoted words and an object, one object) and
differ in length, so the context mask, the CCM's unit mask and the padding all matter: a sampler that dropped the
mask, skipped the TLG's layout, or tokenized the units differently would not draw these images.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from conftest import LiveServer, float32_tolerance, http
from PIL import Image
from typer.testing import CliRunner

pytestmark = pytest.mark.slow  # exports the tiny VLAD bundle once; each test then takes 1-3 s

PROMPTS = ["a sign that reads 'OPEN' and 'CAFE' above a red square", "a small blue circle"]
STEPS = 3
GRAPHS = ["text_encoder", "tlg", "vfe_unet", "vae_decoder"]
SHORT = "'OPEN' on a red square"  # 15 tokens with <bos>/<eos>: within the tiny text tower's 24 positions


@pytest.fixture(scope="module")
def samplers(vlad_bundle):
    from serving.sampler import load_sampler

    return {backend: load_sampler(vlad_bundle[0], backend, "cpu") for backend in ("onnx", "torch")}


def test_both_backends_draw_onnx_images_and_generate_from_the_same_noise(vlad_bundle, samplers):
    from components.models.autoencoder import load_autoencoder
    from components.models.vlad import VLAD
    from serving.export.families import PIXEL_LEVEL
    from serving.export.family_parity import OnnxGraphs
    from serving.export.vlad import onnx_images, text_inputs
    from serving.sampler import SamplingSpec, VladSampler

    out, manifest = vlad_bundle
    onnx = samplers["onnx"]
    assert isinstance(onnx, VladSampler) and not (out / "sampler.json").exists()
    assert onnx.spec == SamplingSpec(latent_channels=4, latent_side=8, vae_factor=2, max_length=24,
                                     sampler="dpmsolver++", num_inference_steps=3, guidance_scale=3.0,
                                     allowed_sides=[16])
    model = VLAD.from_pretrained(out / "pytorch").eval()  # as trained: the LVLM's LoRA unmerged
    inputs, _ = text_inputs(model, PROMPTS)
    assert inputs["local_mask"].sum(dim=1).tolist() == [3, 1]

    noise = onnx.initial_noise(len(PROMPTS), seed=0)
    got, layouts = {}, {}
    for backend, sampler in samplers.items():
        got[backend] = sampler.pixels(PROMPTS, noise=noise, steps=STEPS)
        layouts[backend] = sampler.last_layout
    reference = onnx_images(OnnxGraphs(out / "onnx", GRAPHS), model, PROMPTS, noise, STEPS)
    # `sample` draws its noise as torch.randn((B, C, h, w)) from this generator, as initial_noise does from seed 0
    want, want_layout = model.generate(PROMPTS, load_autoencoder(out / "pytorch" / "vae").eval(),
                                       num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0))
    tolerance = float32_tolerance(manifest, onnx, STEPS, graphs_per_call=3)
    assert tolerance < PIXEL_LEVEL
    for backend, pixels in got.items():
        assert pixels.shape == (2, 3, 16, 16)
        assert (pixels - reference).abs().max() <= tolerance, backend
        assert (pixels - want).abs().max() <= tolerance, backend
        assert layouts[backend].shape == (2, 3, 8, 8)
        # the layout is one TLG call on the text graph's output: two graphs' rounding, no sampling loop
        assert (layouts[backend] - want_layout).abs().max() <= 4 * max(r["max_abs_err"] for r in manifest["parity"]["graphs"]) + 1e-6
    assert got["onnx"].std() > 0.05  # a real image, not a constant

    images = [np.asarray(s.generate(PROMPTS[1:], seed=0, steps=STEPS)[0], np.int16) for s in samplers.values()]
    assert np.abs(images[0] - images[1]).max() <= 1  # generate's noise is initial_noise's: the same image


def test_a_request_draws_the_same_image_alone_or_batched(vlad_bundle, samplers):
    """The service batches requests with other prompts and negatives: the batch's longest text and unit set the
    padding, which the masks give no weight."""
    sampler = samplers["onnx"]
    noise = torch.cat([sampler.initial_noise(1, 11), sampler.initial_noise(1, 12)])
    negatives = ["", "a blurry photo with the word 'SALE'"]
    batched = sampler.pixels(PROMPTS, negative_prompts=negatives, noise=noise, steps=STEPS)
    alone = torch.cat([sampler.pixels([p], negative_prompts=[n], noise=noise[i:i + 1], steps=STEPS)
                       for i, (p, n) in enumerate(zip(PROMPTS, negatives))])
    assert (batched - alone).abs().max() <= float32_tolerance(vlad_bundle[1], sampler, STEPS, graphs_per_call=3)
    # and the negative prompt is used: the same request with the empty negative draws another image
    plain = sampler.pixels(PROMPTS[1:], negative_prompts=[""], noise=noise[1:], steps=STEPS)
    assert (plain - alone[1:]).abs().max() > 0.01


def test_genops_generate_writes_the_image_and_its_layout(vlad_bundle, samplers, tmp_path):
    from components.models.vlad import layout_image
    from orchestration.cli import app

    out = tmp_path / "x.png"
    result = CliRunner().invoke(app, ["generate", "--bundle", str(vlad_bundle[0]), "--prompt", PROMPTS[0],
                                      "--out", str(out), "--steps", "2", "--seed", "4"])
    assert result.exit_code == 0, result.output
    assert "onnx backend on cpu" in result.output and "x.layout.png" in result.output
    [want] = samplers["onnx"].generate(PROMPTS[:1], seed=4, steps=2)
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(want))
    layout = np.asarray(Image.open(tmp_path / "x.layout.png"))
    assert layout.shape == (16, 16, 3)
    assert np.array_equal(layout, layout_image(samplers["onnx"].last_layout[0], 2))


def test_the_service_answers_a_vlad_request_with_its_png(vlad_bundle, samplers):
    from serving.http import ServiceSettings, create_app

    settings = ServiceSettings(bundle=vlad_bundle[0], backend="onnx", device="cpu", max_steps=10, batch_window_s=0.0,
                               token=None)
    with LiveServer(create_app(settings)) as url:
        ready = http(f"{url}/readyz").json()
        assert ready["status"] == "ready" and ready["model"] == "genops-vlad v2"
        assert samplers["onnx"].token_count(PROMPTS[0]) > 24  # the service takes what the text tower reads whole
        reply = http(f"{url}/v1/images", {"prompt": SHORT, "steps": STEPS, "seed": 7})
        assert reply.status == 200 and reply.headers["content-type"] == "image/png", reply.body
        png = np.asarray(Image.open(io.BytesIO(reply.body)), np.int16)
        assert png.shape == (16, 16, 3)
        want = np.asarray(samplers["onnx"].generate([SHORT], seed=7, steps=STEPS)[0], np.int16)
        assert np.abs(png - want).max() <= 1
        reply = http(f"{url}/v1/images", {"prompt": PROMPTS[0], "steps": 2})
        assert reply.status == 422 and reply.json()["detail"][0]["loc"][-1] == "prompt", reply.body
        assert "the model reads at most 24" in reply.json()["detail"][0]["msg"]
