"""VLAD's parts on tiny random models: eq. 3, the CCM's masking, the TLG, the ablation switches, the parser."""

import math
import random
from collections import Counter

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from components.data.scene import sample_scene
from components.data.synthetic.language import cc3m_caption, paragraph, short_caption
from components.data.synthetic.textrich import sample_layout, textrich_caption
from components.models.clip_base import ClipBaseConfig
from components.models.clip_evaluator import CLIPTextTowerConfig, CLIPVisionTowerConfig
from components.models.sd_base import SDUNetConfig
from components.models.vlad import (
    VLAD,
    WEIGHTS_FILE,
    CCMSection,
    ContextualComposition,
    LayoutSection,
    VLADConfig,
    align_loss,
    decompose_prompt,
    layout_target,
)

PROMPTS = [
    "a sign that reads 'OPEN' above a red square and a purple diamond",
    "a small red circle at the top left on a gray background",
    "the words 'CLOUD' and 'TRAIN' written in blue letters",
    "",
]


@pytest.fixture(scope="module")
def tokenizer():
    rng = random.Random(0)
    texts = PROMPTS + [textrich_caption(sample_layout(rng, 128), rng) for _ in range(50)]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<bos>", "<eos>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>")


def tiny_config(ccm: bool = True, layout: bool = True) -> VLADConfig:
    return VLADConfig(
        lvlm=ClipBaseConfig(
            text=CLIPTextTowerConfig(hidden_size=32, intermediate_size=64, num_attention_heads=2, max_position_embeddings=40),
            vision=CLIPVisionTowerConfig(image_size=16, patch_size=8, hidden_size=32, intermediate_size=64,
                                         num_attention_heads=2),
            projection_dim=32,
        ),
        max_local_units=4,
        ccm=CCMSection(enabled=ccm, heads=2),
        layout=LayoutSection(enabled=layout, layers=1, heads=2),
        unet=SDUNetConfig(sample_size=8, block_out_channels=(16, 32), cross_attention=(True, True),
                          attention_head_dim=(2, 4), norm_num_groups=8),
    )


def batch(n: int = 4):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(n, 4, 8, 8, generator=g), torch.rand(n, 3, 16, 16, generator=g) * 2 - 1,
            PROMPTS[:n], torch.rand(n, 3, 8, 8, generator=g))


def test_align_loss_is_eq3_and_prefers_matched_pairs():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(6, 16, generator=g, dtype=torch.float64)
    t = v + 1.5 * torch.randn(6, 16, generator=g, dtype=torch.float64)  # t_i nearer its own v_i than the others
    log_inv_tau = torch.tensor(math.log(1 / 0.07), dtype=torch.float64)
    direct = 0.0
    for i in range(6):
        cos = [float(t[i] @ v[j] / (t[i].norm() * v[j].norm())) for j in range(6)]
        direct -= math.log(math.exp(cos[i] / 0.07) / sum(math.exp(c / 0.07) for c in cos))
    direct /= 6
    # align_loss takes the log-softmax in float32: logits up to 1/0.07 ~ 14.3, float32 eps 1.2e-7 -> ~2e-6 absolute
    assert float(align_loss(t, v, log_inv_tau)) == pytest.approx(direct, abs=1e-5)
    shuffled = align_loss(t, v[torch.tensor([1, 2, 3, 4, 5, 0])], log_inv_tau)
    assert float(align_loss(t, v, log_inv_tau)) < float(shuffled)


def test_ccm_handles_zero_to_m_local_units_and_ignores_padding():
    torch.manual_seed(0)
    ccm = ContextualComposition(16, 2)
    t_g = torch.randn(5, 16)
    t_local = torch.randn(5, 4, 16)
    mask = torch.tensor([[False] * 4, [True, False, False, False], [True, True, False, False],
                         [True, True, True, False], [True] * 4])
    t, local = ccm(t_g, t_local, mask)
    assert torch.isfinite(t).all() and torch.isfinite(local).all()
    assert (local[~mask] == 0).all()
    noisy = t_local.clone()
    noisy[~mask] = 1e3  # whatever sits in the padding must not change anything
    t2, local2 = ccm(t_g, noisy, mask)
    torch.testing.assert_close(t2, t)
    torch.testing.assert_close(local2, local)
    t.sum().backward()
    assert all(p.grad is not None for p in ccm.parameters())


def test_model_with_no_local_units_gives_finite_losses(tokenizer):
    torch.manual_seed(0)
    model = VLAD.from_config(tiny_config(), tokenizer)
    latents, pixels, _, layout = batch(2)
    losses = model(latents, pixels, ["", "a plain gray background"], layout)
    assert all(torch.isfinite(v).all() for v in losses.values())


def test_tlg_predicts_at_latent_size_and_overfits(tokenizer):
    torch.manual_seed(0)
    model = VLAD.from_config(tiny_config(), tokenizer)
    latents, _, prompts, layout = batch(4)
    cond = model.condition(prompts)
    assert model.predict_layout(cond).shape == (4, 3, *latents.shape[-2:])
    params = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("unet.")]
    optimizer = torch.optim.Adam(params, lr=3e-3)
    losses = []
    for _ in range(30):
        cond = model.condition(prompts)
        loss = model.layout_loss(model.tlg(cond.tokens, cond.token_mask), layout)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize(("ccm", "layout"), [(True, True), (False, True), (True, False), (False, False)])
def test_switches_remove_exactly_their_paths(tokenizer, tmp_path, ccm, layout):
    torch.manual_seed(0)
    model = VLAD.from_config(tiny_config(ccm, layout), tokenizer)
    assert (model.ccm is not None) == ccm and (model.tlg is not None) == layout
    assert model.unet.config.in_channels == 4 + (3 if layout else 0)
    latents, pixels, prompts, gt = batch(4)
    model(latents, pixels, prompts, gt if layout else None)["loss"].backward()
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    got_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any(n.startswith("ccm.") for n in got_grad) == ccm
    assert any(n.startswith("tlg.") for n in got_grad) == layout
    assert any("lora_" in n for n in got_grad) and any(n.startswith("unet.") for n in got_grad)
    assert not any(n.startswith("lvlm.") and "lora_" not in n for n in names)  # base LVLM frozen (eq. 10)
    model.save_pretrained(tmp_path / "vlad")
    from safetensors.torch import load_file

    keys = load_file(tmp_path / "vlad" / WEIGHTS_FILE).keys()
    assert any(k.startswith("ccm.") for k in keys) == ccm
    assert any(k.startswith("tlg.") for k in keys) == layout
    reloaded = VLAD.from_pretrained(tmp_path / "vlad")
    for key, value in model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[key], value, rtol=0, atol=0)


def test_without_ccm_local_units_do_not_reach_the_vfe(tokenizer):
    torch.manual_seed(0)
    model = VLAD.from_config(tiny_config(ccm=False), tokenizer)
    cond = model.condition(["a sign that reads 'OPEN'"])
    length = len(model.tokenizer("a sign that reads 'OPEN'", add_special_tokens=False)["input_ids"]) + 2
    assert cond.tokens.shape[1] == 1 + length  # [t_g; global token states (<bos> .. <eos>)], no local slots


def test_cutting_padding_after_the_longest_text_is_exact(tokenizer):
    torch.manual_seed(0)
    model = VLAD.from_config(tiny_config(), tokenizer).eval()
    with torch.no_grad():
        alone = model._text_tokens(["OPEN"])[0]
        beside_a_long_text = model._text_tokens(["OPEN", PROMPTS[0]])[0][:1]
    # the causal tower computes the same values; only fp32 summation order over a longer padded axis differs
    torch.testing.assert_close(alone, beside_a_long_text, rtol=1e-5, atol=1e-5)


def test_parser_is_exact_on_the_synthetic_prompts():
    rng = random.Random(1)
    objects = lambda units: Counter(tuple(o.split()[-2:]) for o in units.objects)
    for _ in range(100):
        layout = sample_layout(rng, 128)
        units = decompose_prompt(textrich_caption(layout, rng))
        assert units.words == [w.text for w in layout.words]
        assert objects(units) == Counter((o.colour, o.shape) for o in layout.scene.objects)
    for caption in (short_caption, cc3m_caption, paragraph):
        for _ in range(60):
            scene = sample_scene(rng)
            assert objects(decompose_prompt(caption(scene, rng))) == Counter((o.colour, o.shape) for o in scene.objects)


def test_parser_on_real_style_prompts():
    units = decompose_prompt("A cat holding a paper saying \"hello world\" on the table.")
    assert units.words == ["hello", "world"] and units.objects == ["A cat", "a paper", "the table"]
    assert decompose_prompt("a storefront sign that says 'OPEN'").words == ["OPEN"]
    assert decompose_prompt("it's a dog's toy").words == []  # apostrophes are not quotes
    assert len(decompose_prompt("'a b c d e f'", max_local_units=3).local) == 3


def test_layout_target_covers_words_objects_and_ink():
    charseg = np.zeros((256, 256), dtype=np.int64)
    charseg[0:64, 0:64] = 5
    z = layout_target(4, (128, 128), word_boxes=[(64, 64, 128, 128)],
                      objects=[{"x": 0.125, "y": 0.875, "radius": 0.1}], charseg=charseg)
    assert z.shape == (3, 4, 4)
    assert float(z[0, 2:, 2:].min()) == 1.0 and float(z[0, :2].max()) == 0.0
    assert float(z[1, 3, 0]) > 0.5 and float(z[1, 0, 3]) == 0.0
    assert float(z[2, 0, 0]) == 1.0 and float(z[2, 1:, 1:].max()) == 0.0
