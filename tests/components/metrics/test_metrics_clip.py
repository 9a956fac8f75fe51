"""CLIP score, CLIP-I and CLIP-T on a tiny random CLIPModel loaded from disk like a real checkpoint.

The reference computation is CLIPModel's own forward: logits_per_image / logit_scale is the cosine
of the image and text embeddings.

Tolerance: ours and the reference run the same fp32 network (2 layers of width 32, 16-d embeddings) on
the same inputs, batched and padded differently. Each matmul sums at most 64 products, so its relative
rounding is at most 64 * 2^-24 = 4e-6 worst case and ~sqrt(64) * 2^-24 = 5e-7 in the random-rounding
model (Higham & Mary 2019); a cosine of unit vectors moves by at most the two embeddings' relative
errors. atol 1e-5 covers the few matmuls in either path with room (observed: 3e-8), while a pooling,
prefix or normalisation mistake moves a cosine by 0.1 or more.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from components.metrics.clip_score import TEXTDIFFUSER_PREFIX, ClipEmbedder, clip_scores

PROMPTS = [
    "a small red circle at the top left",
    "a large blue square in the center",
    "a green triangle at the bottom right",
    "a sign that says 'hello world'",
    "the cat sat on the mat",
    "a purple diamond on the left",
]


@pytest.fixture(scope="module")
def embedder(tiny_clip_dir):
    return ClipEmbedder(tiny_clip_dir)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)) for _ in PROMPTS]


@pytest.fixture(scope="module")
def negated_embedder(tiny_clip_dir, tmp_path_factory):
    """The same CLIP with its text projection negated: every image-text cosine changes sign."""
    import shutil

    from transformers import CLIPModel

    folder = tmp_path_factory.mktemp("negated") / "negated-clip"
    shutil.copytree(tiny_clip_dir, folder)
    model = CLIPModel.from_pretrained(folder)
    with torch.no_grad():
        model.text_projection.weight.neg_()
    model.save_pretrained(folder)
    return ClipEmbedder(folder)


def reference_cosines(embedder: ClipEmbedder, images, texts) -> torch.Tensor:
    """Diagonal of CLIPModel's own image-text similarity, through its processor and tokenizer."""
    pixels = embedder.processor(images=images, return_tensors="pt")["pixel_values"]
    tokens = embedder.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = embedder.model(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=pixels
        )
        return (out.logits_per_image / embedder.model.logit_scale.exp()).diagonal()


def test_clip_score_is_the_cosine_with_the_prefix_and_w_1(embedder, images):
    scores = clip_scores(embedder, images, PROMPTS)
    expected = reference_cosines(embedder, images, [TEXTDIFFUSER_PREFIX + p for p in PROMPTS])
    assert (expected > 0).all()
    np.testing.assert_allclose(scores.per_image_clip_score, expected.numpy(), rtol=0, atol=1e-5)  # see top
    assert scores.clip_score == pytest.approx(float(expected.mean()), abs=1e-5)  # a mean of those
    assert all(0.0 < s <= 1.0 for s in scores.per_image_clip_score)


def test_clip_score_is_clipped_at_zero_where_the_cosine_is_negative(embedder, negated_embedder, images):
    positive = clip_scores(embedder, images, PROMPTS)
    negative = clip_scores(negated_embedder, images, PROMPTS)
    expected = reference_cosines(negated_embedder, images, [TEXTDIFFUSER_PREFIX + p for p in PROMPTS])
    assert (expected < 0).all()
    assert negative.per_image_clip_score == [0.0] * len(PROMPTS) and negative.clip_score == 0.0
    # CLIP-T is the raw cosine (MiniGPT-5 averages it unclipped): it changes sign with the model.
    # Negating the projection negates every product and sum exactly in IEEE arithmetic: equal, not close.
    assert negative.per_image_clip_t == [-t for t in positive.per_image_clip_t]
    assert negative.clip_t < 0


def test_clip_t_is_the_raw_cosine_with_the_plain_text(embedder, images):
    scores = clip_scores(embedder, images, PROMPTS, prefix="")
    expected = reference_cosines(embedder, images, PROMPTS)
    # atol 1e-5: the same fp32 network batched differently (module docstring)
    np.testing.assert_allclose(scores.per_image_clip_t, expected.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(scores.per_image_clip_score, expected.clamp(min=0).numpy(), rtol=0, atol=1e-5)
    with_prefix = clip_scores(embedder, images, PROMPTS)
    assert with_prefix.per_image_clip_score != scores.per_image_clip_score
    # CLIP-T never takes the prefix: the very same computation, bit for bit
    assert with_prefix.per_image_clip_t == scores.per_image_clip_t


def test_clip_i_is_one_for_identical_images_and_below_for_others(embedder, images):
    same = clip_scores(embedder, images, PROMPTS, reference_images=images, batch_size=4)
    # an fp32 unit vector's cosine with itself: within (16 + 3) * 2^-24 = 1e-6 of 1, under abs 1e-5
    assert same.clip_i == pytest.approx(1.0, abs=1e-5)
    shifted = clip_scores(embedder, images, PROMPTS, reference_images=images[1:] + images[:1])
    assert -1.0 <= shifted.clip_i < 0.999
    assert shifted.model == "clip:tiny-clip" and shifted.to_json()["count"] == len(PROMPTS)


def test_clip_scores_reject_mismatched_inputs(embedder, images):
    with pytest.raises(ValueError, match="6 images but 5 prompts"):
        clip_scores(embedder, images, PROMPTS[:5])
    with pytest.raises(ValueError, match="reference images"):
        clip_scores(embedder, images, PROMPTS, reference_images=images[:2])


def test_long_prompts_are_truncated_to_the_text_context(embedder):
    long_prompt = " ".join(["a red circle at the top left and"] * 40)
    emb = embedder.embed_texts([long_prompt])
    assert emb.shape == (1, 16) and torch.isfinite(emb).all()


def test_genops_evaluator_folder_pools_at_eos_id_2(genops_clip_dir):
    """A tokenizer with <eos> = id 2 and no post-processor, as the project's clip_evaluator writes."""
    embedder = ClipEmbedder(genops_clip_dir)
    assert embedder.tokenizer.eos_token_id == 2
    texts = ["a red circle", "a large blue square in the center"]
    input_ids, mask = embedder.tokenize(texts)
    assert (input_ids[:, 0] == embedder.tokenizer.bos_token_id).all()
    last = mask.sum(-1) - 1
    assert (input_ids[torch.arange(2), last] == 2).all()
    with torch.no_grad():
        hidden = embedder.model.text_model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        at_eos = embedder.model.text_projection(hidden[torch.arange(2), last])
        legacy = embedder.model.get_text_features(input_ids=input_ids, attention_mask=mask).pooler_output
    # the same fp32 ops on the same tokens; assert_close's fp32 defaults (rtol 1.3e-6, atol 1e-5) hold a
    # few ulps of re-batching and nothing near pooling at the wrong token (differences of order 1)
    torch.testing.assert_close(embedder.embed_texts(texts), torch.nn.functional.normalize(at_eos, dim=-1))
    # transformers reads eos_token_id == 2 as legacy OpenAI CLIP and pools at the highest id instead.
    assert not torch.allclose(legacy, at_eos)
    image = Image.new("RGB", (48, 48), (200, 40, 40))
    assert embedder.embed_images([image]).shape == (1, 16)  # OpenAI CLIP preprocessing, no processor file
