"""Tiny corpora built in the test's tmp folder: real JPEG files and records pointing at them."""

import pytest
from data_files import write_jpeg

from components.data.records import CaptionImagePair


@pytest.fixture
def pairs(tmp_path) -> list[CaptionImagePair]:
    """30 good caption-image pairs with distinct images."""
    return [
        CaptionImagePair(
            id=f"pair-{i:03d}",
            image_path=write_jpeg(tmp_path / "images" / f"{i:03d}.jpg", seed=i),
            caption=f"a small red circle number {i} at the top left",
            source="test",
        )
        for i in range(30)
    ]
