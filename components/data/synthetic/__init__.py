"""The synthetic world: deterministic, seeded datasets in the real public formats (the embedded default data).

`generate_world(WorldConfig(...), out_dir)` writes every dataset (see `world.py` for the folder
layout) with ground truth beside it and a `world_manifest.json`. Scenes come from
`components/data/scene.py`; text from `language.py`, `stories.py` and `textrich.py`; the formats
from `components/data/formats`.
"""

from components.data.synthetic.faults import FAULT_KINDS, InjectedFault
from components.data.synthetic.world import (
    DATASET_FORMATS,
    MANIFEST,
    DatasetSummary,
    WorldConfig,
    WorldSummary,
    generate_world,
)

__all__ = [
    "DATASET_FORMATS",
    "FAULT_KINDS",
    "MANIFEST",
    "DatasetSummary",
    "InjectedFault",
    "WorldConfig",
    "WorldSummary",
    "generate_world",
]
