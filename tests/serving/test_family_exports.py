"""ONNX exports of the model families (ParaDiffusion, VLAD, MiniGPT-5): every graph matches PyTorch on two
shapes, the LoRA adapters are really merged, the ONNX pipelines draw PyTorch's images, and a bundle carries it all.

Each family is a tiny random model saved as its recipe registers it (save_pretrained with its vae/), with
its LoRA factors (zero-initialised B in PEFT) and the diffusers UNets' zero-initialised conv_out set to
random values, so that a merge that does nothing, a dropped mask or a missing text path changes outputs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import perturb, tiny_vae

from serving.export.onnx_graphs import ATOL, RTOL, cpu_session

PARADIFFUSION_GRAPHS = ["text_encoder", "unet", "vae_decoder"]
VLAD_GRAPHS = ["text_encoder", "tlg", "vfe_unet", "vae_decoder"]
MINIGPT5_GRAPHS = ["feature_mapper", "unet", "vae_decoder"]


def check_parity_rows(parity: dict, graphs: list[str]) -> None:
    rows = parity["graphs"]
    assert sorted({r["graph"] for r in rows}) == sorted(graphs)
    for graph in graphs:
        mine = [r for r in rows if r["graph"] == graph]
        assert len(mine) == 2 and mine[0]["shape"] != mine[1]["shape"], graph
        assert mine[0]["output_shape"] != mine[1]["output_shape"], f"{graph}: both shapes gave one output shape"
        for r in mine:
            assert r["passed"] and r["max_abs_err"] <= ATOL, r
            assert (r["atol"], r["rtol"]) == (ATOL, RTOL)
    e2e = parity["end_to_end"]
    assert e2e["passed"] and e2e["max_abs_pixel_diff"] <= e2e["tolerance"] == pytest.approx(2 / 255), e2e
    assert parity["passed"]


# ---------------------------------------------------------------------------------------------- ParaDiffusion


@pytest.mark.slow
def test_paradiffusion_graphs_match_pytorch_on_two_shapes_and_end_to_end(paradiffusion_bundle):
    _, manifest = paradiffusion_bundle
    check_parity_rows(manifest["parity"], PARADIFFUSION_GRAPHS)
    assert manifest["parity"]["end_to_end"]["steps"] == 3


@pytest.mark.slow
def test_paradiffusion_lora_is_merged_into_the_exported_encoder(paradiffusion_bundle, paradiffusion_dir):
    """The exported text encoder is base + alpha/r B A: not the base LLM, and equal to the adapted one."""
    from components.models.paradiffusion import ParaDiffusion

    out, manifest = paradiffusion_bundle
    merge = manifest["parity"]["lora_merge"]
    # 2 layers x (q_proj, v_proj) changed; every other weight (embeddings, k/o/MLP, norms) identical
    assert merge["changed_weights"] == 4 and merge["min_weight_change"] > 1e-3 and merge["passed"]
    assert merge["output_max_abs_diff"] <= ATOL and merge["unchanged_weights"] > 4

    adapted = ParaDiffusion.from_pretrained(paradiffusion_dir).eval()
    ids, mask = adapted.tokenize(["There is a red circle at the top left.", "There is a square."])
    session = cpu_session(out / "onnx" / "text_encoder.onnx")
    got = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    with torch.no_grad():
        want = adapted.encode_text(ids, mask)[..., :-1].numpy()
        with adapted.text_encoder.disable_adapter():
            base = adapted.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state.numpy()
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=RTOL)
    assert np.abs(got - base).max() > 1e-2  # the adapter changes the output: the graph is not the base LLM


@pytest.mark.slow
def test_paradiffusion_bundle_manifest_carries_the_parity_results(paradiffusion_bundle):
    from serving.bundle import verify_bundle

    out, manifest = paradiffusion_bundle
    on_disk = verify_bundle(out)  # checksums of every file, the ONNX graphs included
    assert on_disk["family"] == "paradiffusion_stage2" and on_disk["registry"]["model"] == "genops-paradiffusion-stage2"
    assert on_disk["parity"] == manifest["parity"] and on_disk["parity"]["graphs"]
    assert sorted(on_disk["onnx"]["graphs"]) == sorted(PARADIFFUSION_GRAPHS)
    for path in on_disk["onnx"]["graphs"].values():
        assert path in on_disk["files"]
    assert "pytorch/text_encoder_lora/adapter_model.safetensors" in on_disk["files"]
    card = (out / "MODEL_CARD.md").read_text()
    assert "| text_encoder |" in card and "| unet |" in card and "End to end" in card
    assert "LoRA merged before export: 4 target weights changed" in card
    assert "genops generate --bundle <this folder>" in card  # the production sampler runs it


def test_every_family_registered_model_has_an_exporter():
    from serving.export.families import FAMILIES

    names = {key: f.registered_model for key, f in FAMILIES.items()}
    assert names["paradiffusion_stage1"] == "genops-paradiffusion-stage1"
    assert names["paradiffusion_stage2"] == "genops-paradiffusion-stage2"
    assert names["paradiffusion_stage3"] == "genops-paradiffusion-stage3"
    assert names["vlad"] == "genops-vlad"
    assert names["minigpt5_stage1"] == "genops-minigpt5-stage1" and names["minigpt5_stage2"] == "genops-minigpt5-stage2"


# ----------------------------------------------------------------------------------------------------- VLAD


@pytest.fixture(scope="module")
def vlad_export(vlad_dir, vlad_bundle):
    """(model folder, bundle folder, manifest): the tiny VLAD's export, inside the bundle conftest builds."""
    return vlad_dir, *vlad_bundle


@pytest.mark.slow
def test_vlad_graphs_match_pytorch_on_two_shapes_and_end_to_end(vlad_export):
    _, out, sections = vlad_export
    check_parity_rows(sections["parity"], VLAD_GRAPHS)
    for graph in VLAD_GRAPHS:
        assert (out / "onnx" / f"{graph}.onnx").is_file()


@pytest.mark.slow
def test_vlad_lvlm_lora_is_merged_in_both_towers(vlad_export):
    merge = vlad_export[2]["parity"]["lora_merge"]
    # q_proj and v_proj of the one text and one vision layer
    assert merge["merged_layers"] == 4 and merge["changed_weights"] == 4 and merge["min_weight_change"] > 1e-3
    assert merge["passed"] and merge["output_max_abs_diff"] <= ATOL


@pytest.mark.slow
def test_vlad_text_graph_reproduces_condition_for_prompts_with_and_without_units(vlad_export):
    """The host-side inputs + text graph give `VLAD.condition`'s tokens (the as-trained, unmerged LVLM)."""
    from components.models.vlad import VLAD
    from serving.export.vlad import text_inputs

    folder, out, _ = vlad_export
    model = VLAD.from_pretrained(folder).eval()
    prompts = ["the words 'CLOUD' and 'TRAIN' above a red square", "", "a blue circle"]
    inputs, mask = text_inputs(model, prompts)
    assert inputs["local_mask"].sum(dim=1).tolist() == [3, 0, 1]
    session = cpu_session(out / "onnx" / "text_encoder.onnx")
    got = session.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
    with torch.no_grad():
        cond = model.condition(prompts)
    np.testing.assert_allclose(got, cond.tokens.numpy(), atol=ATOL, rtol=RTOL)
    assert torch.equal(mask, cond.token_mask)


# ------------------------------------------------------------------------------------------------ MiniGPT-5


@pytest.fixture(scope="module")
def minigpt5_export(tmp_path_factory):
    from tiny_sd import TINY, tiny_tokenizer

    from components.config import load_config
    from components.models.clip_base import ClipBase, ClipBaseConfig
    from components.models.llm_base import LlmBase, LlmBaseConfig
    from components.models.minigpt5 import MapperConfig, MiniGPT5, MiniGPT5Config
    from components.models.sd_base import SDBase
    from serving.export.minigpt5 import export
    from tests.minigpt5_parts import MODELS

    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    llm = LlmBase.from_config(load_config(LlmBaseConfig, MODELS / "llm_base" / "tiny.yaml"), tokenizer).model
    clip = ClipBase.from_config(load_config(ClipBaseConfig, MODELS / "clip_base" / "tiny.yaml"), tiny_tokenizer())
    generator = SDBase.from_config(TINY, tiny_tokenizer())  # its own tokenizer: the LLM's gets the vokens
    perturb(generator.unet, ("conv_out",), 0.05, seed=6)
    cfg = MiniGPT5Config(num_vokens=4, mapper=MapperConfig(num_heads=2, dim_feedforward=32, num_encoder_layers=1,
                                                           num_decoder_layers=1))
    cfg.visual.num_heads, cfg.visual.num_queries = 2, 4
    cfg.sampling.guidance_scale = 3.0
    model = MiniGPT5(cfg, llm, tokenizer, clip, generator, tiny_vae(16))
    folder = model.save_pretrained(tmp_path_factory.mktemp("minigpt5") / "model")
    out = tmp_path_factory.mktemp("minigpt5-export")
    return folder, out, export(folder, out, e2e_steps=3)


@pytest.mark.slow
def test_minigpt5_mapper_and_generator_graphs_match_pytorch(minigpt5_export):
    _, out, sections = minigpt5_export
    check_parity_rows(sections["parity"], MINIGPT5_GRAPHS)
    assert sorted(p.name for p in (out / "onnx").iterdir()) == sorted(f"{g}.onnx" for g in MINIGPT5_GRAPHS)
    assert "PyTorch" in sections["onnx"]["not_exported"]["llm"]


@pytest.mark.slow
def test_minigpt5_mapper_graph_maps_real_voken_states_like_pytorch(minigpt5_export):
    """Voken states from the LLM (not random features) through the ONNX mapper, at a batch the export never saw."""
    from components.models.minigpt5 import MiniGPT5

    folder, out, _ = minigpt5_export
    model = MiniGPT5.from_pretrained(folder).eval()
    prompts = ["a red circle", "a blue square at the top", "a green triangle", "two circles"]
    sequences = [model.build_sequence(p, None)[0][:-1] + [list(model.voken_ids)] for p in prompts]
    with torch.no_grad():
        inputs, mask, ids, _ = model.embed_sequences(sequences, None)
        hidden = model.causal_lm.model(inputs_embeds=inputs, attention_mask=mask).last_hidden_state
        h = model.voken_states(hidden, ids)  # (4, n, d_llm)
        want = model.mapper(h).numpy()
    got = cpu_session(out / "onnx" / "feature_mapper.onnx").run(None, {"voken_states": h.numpy()})[0]
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=RTOL)


# ----------------------------------------------------------------------------- families the sampler does not run


@pytest.mark.slow
@pytest.mark.parametrize("export, family, reason", [("minigpt5_export", "minigpt5_stage2", "voken states")])
def test_the_sampler_refuses_minigpt5_bundles_saying_why(request, tmp_path, export, family, reason):
    """The family's export with the manifest `build_bundle` writes over it: a verified bundle that load_sampler
    and `genops generate` refuse, naming the family and what the sampler does not do for it."""
    import shutil

    from typer.testing import CliRunner

    from orchestration.cli import app
    from serving.bundle import BundleError, verify_bundle, write_manifest
    from serving.sampler import load_sampler

    _, out, sections = request.getfixturevalue(export)
    bundle = tmp_path / family
    shutil.copytree(out, bundle)
    write_manifest(bundle, {"family": family, **sections})
    verify_bundle(bundle)
    with pytest.raises(BundleError, match=rf"is a {family} bundle, which the production sampler does not run: .*{reason}"):
        load_sampler(bundle, "onnx", "cpu")
    result = CliRunner().invoke(app, ["generate", "--bundle", str(bundle), "--prompt", "a red circle", "--out",
                                      str(tmp_path / "x.png")])
    assert result.exit_code == 1 and f"{family} bundle" in result.output and reason in result.output
    assert not (tmp_path / "x.png").exists()
