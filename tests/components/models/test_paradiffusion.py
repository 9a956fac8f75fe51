"""ParaDiffusion's model: the LLM reads whole paragraphs into cross-attention, only LoRA + UNet train,
padding is masked, CFG sampling, and the diffusers-layout save/load with a PEFT adapter."""

import pytest
import torch

from components.models.autoencoder import AutoencoderConfig, build_autoencoder, load_autoencoder
from components.models.paradiffusion import LORA_FOLDER, LoraSettings, ParaDiffusion, ParaDiffusionConfig
from tests.paradiffusion_parts import HIDDEN, build, config, llm, make_tokenizer, paragraph


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def test_a_400_word_paragraph_reaches_cross_attention_untruncated(tokenizer):
    model = build(tokenizer).eval()
    text = paragraph(400)
    tokens = 1 + len(tokenizer(text, add_special_tokens=False)["input_ids"])  # <s> + the paragraph
    assert tokens > 77  # more than CLIP's context
    seen = []
    hooks = [m.register_forward_pre_hook(lambda _, args, kwargs: seen.append(
        (kwargs["encoder_hidden_states"].shape, kwargs["attention_mask"])), with_kwargs=True)
        for n, m in model.unet.named_modules() if n.endswith("attn2")]
    with torch.no_grad():
        model(torch.randn(1, 4, 4, 4), *model.tokenize([text]), generator=torch.Generator().manual_seed(0))
    for hook in hooks:
        hook.remove()
    assert seen and all(shape == (1, tokens, HIDDEN) for shape, _ in seen)
    # the UNet turns the mask into an additive bias over the keys: 0 on every one of the paragraph's tokens
    assert all(bias.shape == (1, 1, tokens) and torch.all(bias == 0) for _, bias in seen)


def test_texts_longer_than_max_tokens_are_cut_there(tokenizer):
    model = build(tokenizer, max_tokens=100)
    ids, mask = model.tokenize([paragraph(400), "a red circle"])
    assert ids.shape[1] == 100 and mask[0].sum() == 100 and mask[1].sum() < 10


def test_masked_padding_gives_the_same_prediction_as_the_unpadded_text(tokenizer):
    model = build(tokenizer).eval()
    latents, t = torch.randn(1, 4, 4, 4), torch.tensor([500])
    with torch.no_grad():
        alone = model.denoise(latents, t, model.encode_prompts(["a red circle at the top left"]))
        model.cfg.padding = "max_length"
        padded = model.denoise(latents, t, model.encode_prompts(["a red circle at the top left"]))
    assert model.encode_prompts(["x"]).shape[1] == 512
    # the same fp32 sums, the padded keys' softmax weights underflow to exactly 0 (diffusers' -inf-like bias)
    torch.testing.assert_close(padded, alone, rtol=0, atol=1e-6)
    model.cfg.padding = "longest"


def test_only_the_adapter_and_the_unet_learn(tokenizer):
    model = build(tokenizer, rank=4)
    trainable, total = model.text_encoder_parameters()
    # q_proj and v_proj of 2 layers, each A (r x 16) + B (16 x r)
    assert trainable == 2 * 2 * (4 * HIDDEN + HIDDEN * 4)
    assert total == trainable + sum(p.numel() for p in llm(tokenizer).parameters())
    loss = model(torch.randn(2, 4, 4, 4), *model.tokenize(["a red circle", paragraph(50)]),
                 generator=torch.Generator().manual_seed(0))["loss"]
    loss.backward()
    for name, p in model.text_encoder.named_parameters():
        assert (p.grad is not None) == ("lora_" in name), name
    assert all(p.grad is not None for p in model.unet.parameters() if p.requires_grad)
    lora_a = [p for n, p in model.text_encoder.named_parameters() if "lora_A" in n]
    assert all(p.grad.abs().max() == 0 for p in lora_a)  # B starts at 0, so A's first gradient is 0 (PEFT's init)
    assert any(p.grad.abs().max() > 0 for n, p in model.text_encoder.named_parameters() if "lora_B" in n)


def test_without_lora_the_llm_runs_without_autograd(tokenizer):
    model = build(tokenizer)
    assert model.text_encoder_parameters()[0] == 0
    context = model.encode_prompts(["a red circle"])
    assert not context.requires_grad


def test_guided_sampling_is_seeded_and_follows_the_text(tokenizer):
    model = build(tokenizer).eval()
    run = lambda texts: model.sample_latents(texts, generator=torch.Generator().manual_seed(0))
    a, b = run(["a red circle at the top left"]), run(["a red circle at the top left"])
    assert a.shape == (1, 4, 4, 4) and torch.equal(a, b)
    assert not torch.equal(a, run([paragraph(80)]))


def test_save_and_load_keep_the_adapter_separate_and_mergeable(tokenizer, tmp_path):
    model = build(tokenizer, rank=4).eval()
    with torch.no_grad():
        for n, p in model.text_encoder.named_parameters():
            if "lora_B" in n:
                p.add_(0.1)
    vae = build_autoencoder(AutoencoderConfig(sample_size=16, block_out_channels=(8, 8, 8), norm_num_groups=4)).eval()
    model.save_pretrained(tmp_path / "m", vae=vae)
    assert (tmp_path / "m" / LORA_FOLDER / "adapter_config.json").is_file()
    assert (tmp_path / "m" / LORA_FOLDER / "adapter_model.safetensors").is_file()
    loaded = ParaDiffusion.from_pretrained(tmp_path / "m").eval()
    assert loaded.has_lora and not any(p.requires_grad for p in loaded.text_encoder.parameters())
    ids, mask = model.tokenize([paragraph(40)])
    with torch.no_grad():
        before = model.encode_text(ids, mask)
        torch.testing.assert_close(loaded.encode_text(ids, mask), before, rtol=0, atol=0)
        loaded.merge_lora()
        # W + (alpha/r) B A folded once in fp32: a few ulps of activations ~1
        torch.testing.assert_close(loaded.encode_text(ids, mask), before, rtol=0, atol=1e-5)
    images = loaded.generate(["a red circle"], load_autoencoder(tmp_path / "m" / "vae"), num_inference_steps=2,
                             generator=torch.Generator().manual_seed(0))
    assert images.shape == (1, 3, 16, 16)


def test_bad_settings_are_refused_with_the_field_name(tokenizer):
    with pytest.raises(ValueError, match="lora.rank"):
        LoraSettings(rank=-1)
    with pytest.raises(ValueError, match="lora.target_modules"):
        ParaDiffusion.from_llm(ParaDiffusionConfig(lora=LoraSettings(rank=2, target_modules=["nope"]), unet=config().unet),
                               llm(tokenizer), tokenizer)
    from components.models.sd_base import build_unet

    with pytest.raises(ValueError, match="cross_attention_dim"):
        ParaDiffusion(config(), llm(tokenizer), build_unet(config().unet, cross_attention_dim=HIDDEN * 2), tokenizer)
