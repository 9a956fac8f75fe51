"""MiniGPT-5's model: vokens, the mapper's paper sizes (meta device), the trainable set of each stage,
CFG dropout, and interleaved generation with a forced voken."""

import math

import pytest
import torch

from components.models.minigpt5 import (
    FeatureMapper,
    MapperConfig,
    MiniGPT5,
    MiniGPT5Config,
    story_task,
    voken_string,
)
from tests.minigpt5_parts import build_base_folders

# the session's tiny_data world (built once per session) dominates this file's time when it runs alone
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def parts(tiny_data, tmp_path_factory):
    return build_base_folders(tmp_path_factory.mktemp("minigpt5_parts"), tiny_data / "data" / "tokenizer")


def fresh(parts, **overrides) -> MiniGPT5:
    torch.manual_seed(0)
    cfg = MiniGPT5Config(mapper=MapperConfig(num_heads=4, dim_feedforward=64), **overrides)
    cfg.visual.num_heads = 4
    cfg.visual.num_queries = 4
    cfg.sampling.num_inference_steps = 2
    cfg.sampling.max_new_tokens = 6
    return MiniGPT5.from_parts(cfg, parts["llm"], parts["clip"], parts["sd"])


def test_paper_mapper_maps_1x8x4096_to_1x77x1024_with_the_official_sizes():
    cfg = MapperConfig(num_heads=8, dim_feedforward=4096, num_encoder_layers=4, num_decoder_layers=4)
    with torch.device("meta"):
        mapper = FeatureMapper(4096, 1024, 77, cfg)
        out = mapper(torch.zeros(1, 8, 4096))
    assert tuple(out.shape) == (1, 77, 1024)
    count = lambda m: sum(p.numel() for p in m.parameters())
    # MLP: 4096*1024 + 1024 + 1024*1024 + 1024
    assert count(mapper.mlp) == 4096 * 1024 + 1024 + 1024 * 1024 + 1024
    # enc layer: attn 4*1024^2 + 4*1024, FF 2*1024*4096 + 4096 + 1024, 2 LayerNorms; dec adds cross-attn + 1 LN;
    # plus the final encoder and decoder LayerNorms
    attn = 4 * 1024 * 1024 + 4 * 1024
    ff = 2 * 1024 * 4096 + 4096 + 1024
    ln = 2 * 1024
    assert count(mapper.enc_dec) == 4 * (attn + ff + 2 * ln) + 4 * (2 * attn + ff + 3 * ln) + 2 * ln
    assert mapper.q.shape == (1, 77, 1024)
    assert mapper.enc_dec.encoder.layers[0].norm_first and mapper.enc_dec.encoder.layers[0].dropout.p == 0.0


def test_vokens_are_added_with_the_mean_of_the_old_rows(parts):
    model = fresh(parts)
    ids = model.voken_ids
    assert model.tokenizer.convert_ids_to_tokens(ids) == [f"[IMG{i}]" for i in range(1, 9)]
    emb = model.causal_lm.get_input_embeddings().weight
    head = model.causal_lm.get_output_embeddings().weight
    old = min(ids)
    # each voken row is the mean of the old rows (fp32 mean of ~400 rows: ulp-level agreement)
    torch.testing.assert_close(emb[ids], emb[:old].mean(0, keepdim=True).expand(8, -1), rtol=0, atol=1e-6)
    torch.testing.assert_close(head[ids], head[:old].mean(0, keepdim=True).expand(8, -1), rtol=0, atol=1e-6)
    # the vokens tokenize as single tokens
    assert model.tokenizer(voken_string(8), add_special_tokens=False)["input_ids"] == ids


def _stage_batch(model: MiniGPT5, stage: int) -> dict:
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    latents = torch.randn(2, 4, 8, 8, generator=g)
    vokens = voken_string(8)
    batch = {"prompts": ["a small red circle at the top", "a blue square"], "answers": [vokens, f"then it moved {vokens}"],
             "latents": latents,
             "caption_features": model.generator.encode_prompts(["a small red circle", "a blue square"])}
    if stage == 1:
        batch.update({"caption_prompts": ["<Img><ImageHere></Img> describe this image."] * 2,
                      "captions": ["a small red circle", "a blue square"], "images": pixels})
    else:
        batch.update({"prompts": ["<Img><ImageHere></Img> a circle", "a square"], "images": pixels[:1]})
    return batch


@pytest.mark.parametrize("stage", [1, 2])
def test_one_optimizer_step_changes_exactly_the_stage_s_trainable_parameters(parts, stage):
    model = fresh(parts)
    groups = model.set_stage(stage)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    out = model(_stage_batch(model, stage), {"text": 1.0, "ldm": 1.0, "cap": 1.0, "imgcap": 1.0},
                noise=torch.Generator().manual_seed(1), dropout=torch.Generator().manual_seed(2))
    out["loss"].backward()
    optimizer.step()
    changed = {k for k, v in model.named_parameters() if not torch.equal(v, before[k])}
    emb_name = next(k for k, v in model.named_parameters() if v is model.causal_lm.get_input_embeddings().weight)
    head_name = next(k for k, v in model.named_parameters() if v is model.causal_lm.get_output_embeddings().weight)
    for name in (emb_name, head_name):  # only the voken rows of both matrices moved
        now = dict(model.named_parameters())[name]
        rows = (now != before[name]).any(dim=1).nonzero().flatten().tolist()
        assert rows == sorted(model.voken_ids), name
    assert any(k.startswith("mapper.enc_dec") for k in changed)
    assert not any(k.startswith(("generator.", "visual_encoder.", "vae.")) for k in changed)
    llm_changed = {k for k in changed if k.startswith("llm.")} - {emb_name, head_name}
    if stage == 1:
        assert llm_changed == set()
        assert {"mapper.q", "pooler.queries"} <= changed and any(k.startswith("mapper.mlp") for k in changed)
        assert any(k.startswith("pooler.projection") for k in changed)
        assert set(groups) >= {"voken_input", "voken_output", "mapper.mlp", "mapper.enc_dec", "mapper.q"}
    else:
        assert llm_changed and all("lora_" in k for k in llm_changed)
        assert not any(k.startswith(("mapper.mlp", "pooler.")) for k in changed) and "mapper.q" not in changed
        assert set(groups) == {"voken_input", "voken_output", "lora", "mapper.enc_dec"}
    assert out["l_ldm"] > 0 and out["l_cap"] > 0 and out["l_text"] > 0


def test_cfg_dropout_rate_holds_on_a_large_batch(parts):
    model = fresh(parts)
    model.set_stage(1)
    n = 4000
    h = torch.randn(n, 8, model.causal_lm.config.hidden_size)
    from components.diffusion import condition_dropout_mask

    drop = condition_dropout_mask(n, model.cfg.cfg_dropout, torch.Generator().manual_seed(0))
    sd = math.sqrt(n * 0.1 * 0.9)  # binomial sd: 19 of 4000
    assert abs(int(drop.sum()) - n * 0.1) < 4 * sd
    with torch.no_grad():
        mapped = model.map_vokens(h[:64], drop[:64])
        zeros = model.mapper(torch.zeros(1, 8, h.shape[-1]))
    # dropped rows are exactly the mapping of zero features (eq. 5's h_hat_0); kept rows differ from it
    for i in range(64):
        same = torch.allclose(mapped[i], zeros[0], atol=1e-6)
        assert same == bool(drop[i])


def test_forward_drops_the_configured_fraction_of_voken_rows(parts):
    model = fresh(parts, cfg_dropout=0.5)
    model.set_stage(1)
    batch = _stage_batch(model, 1)
    rows = 0
    dropped = 0.0
    g = torch.Generator().manual_seed(3)
    for _ in range(100):
        with torch.no_grad():
            out = model(batch, {"text": 1.0, "ldm": 0.0, "cap": 1.0}, dropout=g)
        dropped += float(out["cfg_dropped"]) * 2
        rows += 2
    assert abs(dropped - rows * 0.5) < 4 * math.sqrt(rows * 0.25)


def test_generate_with_a_forced_voken_returns_text_and_an_image(parts):
    model = fresh(parts)
    pixels = torch.rand(1, 3, 32, 32) * 2 - 1
    text, image, _ = model.generate("<Img><ImageHere></Img> a red circle", pixels, seed=0, force_image=True)
    assert isinstance(text, str)
    assert image.shape == (1, 3, 32, 32) and image.abs().max() <= 1


def test_save_and_load_round_trip_keeps_vokens_and_heads(parts, tmp_path):
    model = fresh(parts)
    model.set_stage(2)
    with torch.no_grad():
        model.mapper.q.add_(1.0)
    model.save_pretrained(tmp_path / "m")
    loaded = MiniGPT5.from_pretrained(tmp_path / "m")
    assert loaded.voken_ids == model.voken_ids
    assert torch.equal(loaded.mapper.q, model.mapper.q)
    # LoRA B starts at zero, so the merged weights equal the base ones bit for bit
    assert torch.equal(loaded.causal_lm.get_input_embeddings().weight, model.causal_lm.get_input_embeddings().weight)


def test_story_tasks_follow_the_three_types_and_the_context_choice():
    steps = [{"text": "one", "has_image": True}, {"text": "two", "has_image": True}, {"text": "three", "has_image": True}]
    prompt, answer, images, target = story_task(steps, 2, "text", 8)
    assert answer == "three" and images == [0, 1, 2] and target is None and prompt.endswith("<Img><ImageHere></Img>")
    prompt, answer, images, target = story_task(steps, 2, "image", 8)
    assert answer == voken_string(8) and prompt.endswith("three") and target == 2
    prompt, answer, images, target = story_task(steps, 2, "both", 8, context="text")
    assert answer.startswith("three ") and images == [] and prompt == "one two"
    assert story_task(steps, 2, "both", 8, context="none")[0] == ""
