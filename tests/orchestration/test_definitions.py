"""The code location loads, validates, and uses AssetSelection objects (string selections break with DVC)."""

import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from orchestration.definitions import defs

PROJECT = Path(__file__).resolve().parents[2]


def test_every_job_resolves_with_its_selection():
    # A string selection in define_asset_job would raise TypeError (antlr) right here.
    for name in ("data_job", "base_models_job"):
        job = defs.resolve_job_def(name)
        assert job.name == name
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"synthetic_world", "prepared_laion_short", "tokenizer", "vae", "clip_evaluator", "sd_base"} <= keys


def test_string_selections_still_clash_with_dvcs_antlr_pin():
    """Why the code never uses string selections: with DVC installed, Dagster's parser raises.

    If this starts failing, the pin clash is gone and string selections became safe again.
    """
    with pytest.raises(TypeError, match="ord"):
        dg.AssetSelection.from_string("group:data")


def test_base_models_depend_on_the_data_they_read():
    graph = defs.resolve_asset_graph()
    parents = {k.to_user_string() for k in graph.get(dg.AssetKey("sd_base")).parent_keys}
    assert parents == {"vae", "prepared_laion_short", "tokenizer"}


@pytest.mark.slow
def test_dagster_definitions_validate_passes():
    dagster = Path(sys.executable).parent / "dagster"
    result = subprocess.run([str(dagster), "definitions", "validate", "-m", "orchestration.definitions"],
                            cwd=PROJECT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "All code locations passed validation" in result.stderr + result.stdout
