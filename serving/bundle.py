"""Export bundles: a self-contained, checksummed folder a serving host loads without the training side.

Layout (sd_base; a family adds its graphs through `serving.export.families`):
    manifest.json          format version, family, sha256 of every other file, registry model/version/alias,
                           source run, dataset versions, git commit, metrics, parity results, creation time
    MODEL_CARD.md          what the model is, how it was made and checked, how to run it
    sampler.json           latent shape, text length, sampler defaults, allowed image sides
    onnx/                  text_encoder.onnx, unet.onnx, vae_decoder.onnx (opset 17, dynamic axes)
    pytorch/               the save_pretrained folder: safetensors weights + configs, tokenizer/, scheduler/, vae/
                           (attention processor: manifest.pytorch.attention_processor)

Nothing in a bundle is unpickled: weights are safetensors and ONNX protobuf, the tokenizer is
tokenizer.json, configs are JSON; `verify_bundle` refuses pickle-format files outright. Bundles are
built in a temporary folder beside the target and renamed into place (`atomic_directory`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from components.fileio import atomic_directory, atomic_write_json

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class BundleError(ValueError):
    """A bundle that must not be served: missing, changed, extra or pickle-format files."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def bundle_files(root: Path) -> list[str]:
    """Every regular file under `root` except the manifest, as sorted POSIX relative paths."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)


def verify_bundle(root: str | Path) -> dict[str, Any]:
    """The manifest, after checking that every file's sha256 matches it and no file is missing or extra.

    Raises BundleError naming the first offending file.
    """
    root = Path(root)
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{root} is not an export bundle: {manifest_path} is missing")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{manifest_path} is not valid JSON: {exc}") from exc
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{manifest_path}: format_version {manifest.get('format_version')!r}, this genops reads "
                          f"{FORMAT_VERSION}")
    expected = manifest.get("files", {})
    present = bundle_files(root)
    for rel in present:
        if rel.endswith(PICKLE_SUFFIXES):
            raise BundleError(f"{root / rel}: pickle-format file in a bundle; bundles hold safetensors/ONNX/JSON only")
        if rel not in expected:
            raise BundleError(f"{root / rel} is not listed in {MANIFEST}: the bundle was changed after export")
    for rel, digest in expected.items():
        path = root / rel
        if not path.is_file():
            raise BundleError(f"{path} is listed in {MANIFEST} but missing")
        actual = sha256_file(path)
        if actual != digest:
            raise BundleError(f"{path}: sha256 {actual[:16]}... does not match the manifest's {digest[:16]}...; "
                              f"the file was modified after export")
    return manifest


def write_manifest(root: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    manifest = {**manifest, "format_version": FORMAT_VERSION,
                "files": {rel: sha256_file(root / rel) for rel in bundle_files(root)}}
    atomic_write_json(root / MANIFEST, manifest)
    return manifest


def model_card(manifest: dict[str, Any]) -> str:
    from serving.sampler import SAMPLER_FAMILIES

    reg = manifest["registry"]
    parity = manifest["parity"]
    graph_rows = "\n".join(
        f"| {r['graph']} | {r['shape']} | {r['max_abs_err']:.2e} | {'pass' if r['passed'] else 'FAIL'} |"
        for r in parity["graphs"])
    e2e = parity["end_to_end"]
    merge = parity.get("lora_merge")
    merge_line = (f"\nLoRA merged before export: {merge['changed_weights']} target weights changed against the base, "
                  f"{merge['unchanged_weights']} others identical; merged vs adapted output max abs diff "
                  f"{merge['output_max_abs_diff']:.2e}.\n" if isinstance(merge, dict) else "")
    run_it = ("""    genops generate --bundle <this folder> --prompt "a red circle at the top left" --out x.png [--backend torch]
    genops serve --bundle <this folder>""" if manifest["family"] in SAMPLER_FAMILIES else
              f"    The production sampler and service run {', '.join(SAMPLER_FAMILIES)} bundles. This bundle's ONNX\n"
              "    graphs, their named inputs and dynamic axes are in manifest.json (onnx.io); what stays on the host:\n"
              "    serving.host_side.")
    metrics = "\n".join(f"- {k}: {v}" for k, v in sorted(manifest.get("metrics", {}).items())) or "- (none logged)"
    return f"""# {reg['model']} version {reg['version']} ({manifest['family']})

Exported {manifest['created_at']} from MLflow run `{manifest['source_run']}` (git {manifest['git_commit']}),
registry alias: {reg.get('alias') or '-'}. Datasets: {manifest.get('dataset_versions') or '-'}.

## What it is
{manifest['description']}

## Metrics at registration
{metrics}

## Parity (onnxruntime CPU vs PyTorch, |ort - torch| <= {parity['atol']} + {parity['rtol']} * |torch|)
| graph | input shape | max abs error | result |
|---|---|---|---|
{graph_rows}

End to end (same initial noise, {e2e['steps']} steps, guidance {e2e['guidance_scale']}): max pixel difference
{e2e['max_abs_pixel_diff']:.2e} in [-1, 1] units (tolerance {e2e['tolerance']:.2e}: {e2e['tolerance_reason']}),
{'pass' if e2e['passed'] else 'FAIL'}.
{merge_line}
## Run it
{run_it}

Backends: ONNX Runtime (CUDA provider when active, else CPU) or PyTorch ({manifest['pytorch']['attention_processor']}).
Image sides offered: {manifest['serving']['allowed_sides']}. Limitations: a demo-scale model trained on synthetic
scenes; it draws coloured shapes from short captions, nothing else.
"""


def build_bundle(out: Path, family: str, model_dir: Path, registry: dict[str, Any], lineage: dict[str, Any],
                 e2e_steps: int = 4) -> dict[str, Any]:
    """Export `model_dir` (a registered save_pretrained folder) of `family` into the bundle folder `out`."""
    from serving.export.families import FAMILIES

    if family not in FAMILIES:
        raise ValueError(f"no exporter for {family!r}; families with one: {', '.join(FAMILIES)}")
    exporter = FAMILIES[family]
    with atomic_directory(out) as tmp:
        details = exporter.export(model_dir, tmp, e2e_steps=e2e_steps)
        manifest = {
            "family": family,
            "description": exporter.description,
            "registry": registry,
            "source_run": lineage.get("source_run"),
            "dataset_versions": lineage.get("dataset_versions", {}),
            "git_commit": lineage.get("git_commit", "unknown"),
            "metrics": lineage.get("metrics", {}),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **details,
        }
        (tmp / "MODEL_CARD.md").write_text(model_card(manifest))
        manifest = write_manifest(tmp, manifest)
    return manifest


def copy_tree(src: Path, dst: Path, skip_suffixes: tuple[str, ...] = PICKLE_SUFFIXES) -> None:
    """Copy a save_pretrained folder, refusing pickle-format weights (a bundle carries safetensors only)."""
    for path in sorted(src.rglob("*")):
        if path.is_dir():
            continue
        if path.suffix in skip_suffixes:
            raise BundleError(f"{path}: pickle-format weights cannot go into a bundle; save with safetensors")
        target = dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
