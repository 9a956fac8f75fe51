from dataclasses import dataclass, field
from pathlib import Path

import pytest

from components.config import ConfigError, flatten, load_config, to_dict


@dataclass
class Optim:
    lr: float = 1e-3
    """Learning rate."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""


@dataclass
class Run:
    steps: int = 10
    """Steps."""
    name: str = "x"
    """Name."""
    use_ema: bool = True
    """EMA on."""
    out: Path | None = None
    """Output folder."""
    optim: Optim = field(default_factory=Optim)
    """Optimizer."""
    extra: dict[str, Optim] = field(default_factory=dict)
    """Named optimizers."""


def test_yaml_values_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("steps: 20\noptim:\n  lr: 3e-4\nextra:\n  b: {lr: 0.5}\n")
    cfg = load_config(Run, path, ["optim.betas=[0.8, 0.9]", "use_ema=false", "out=/tmp/o", "name=5"])
    assert cfg.steps == 20
    # YAML 1.1 reads 3e-4 as a string; the loader coerces it (float('3e-4') is the nearest double: exact)
    assert cfg.optim.lr == 3e-4
    assert cfg.optim.betas == (0.8, 0.9)
    assert cfg.use_ema is False
    assert cfg.out == Path("/tmp/o")
    assert cfg.name == "5"
    assert isinstance(cfg.extra["b"], Optim) and cfg.extra["b"].lr == 0.5
    assert flatten(cfg)["optim.lr"] == 3e-4
    assert to_dict(cfg)["out"] == "/tmp/o"


def test_unknown_key_names_the_key_and_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['stepz'\].*valid keys: .*steps"):
        load_config(Run, None, ["stepz=3"])


def test_wrong_type_names_the_field():
    with pytest.raises(ConfigError, match="steps: expected an integer"):
        load_config(Run, None, ["steps=ten"])
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config(Run, None, ["steps"])


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Run, tmp_path / "nope.yaml")


@dataclass
class Section:
    split: str = "train"
    size: int = 1


@dataclass
class Owner:
    section: Section = field(default_factory=lambda: Section(split="holdout"))


def test_a_section_given_in_part_keeps_the_owners_default_for_the_rest():
    from components.config import from_dict

    assert from_dict(Owner, {"section": {"size": 3}}).section == Section(split="holdout", size=3)
    assert from_dict(Owner, {"section": {"split": "val"}}).section.split == "val"
    assert from_dict(Owner, {}).section.split == "holdout"


@pytest.mark.parametrize("profile", ["tiny", "demo", "paper"])
def test_the_evaluator_clip_trains_on_the_holdout_split_in_every_profile(profile):
    # its YAMLs give a `data:` section without train_split: the recipe's holdout default must survive
    from training_jobs.launcher import resolve_config

    assert resolve_config("clip_evaluator", profile, []).data.train_split == "holdout"
    assert resolve_config("clip_base", profile, []).data.train_split == "train"
