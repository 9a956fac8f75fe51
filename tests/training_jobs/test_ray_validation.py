"""Validation as a Ray Data pipeline gives the same verdicts as the in-process engine."""

from pathlib import Path

import pytest

from components.data.formats import read_corpus
from components.data.validation import ValidationConfig, validate_records
from training_jobs.ray_validation import ray_engine

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "formats"

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("fmt", ["cc3m", "mario", "vist"])
def test_ray_engine_matches_the_local_engine(fmt, ray_session):
    cfg = ValidationConfig()
    local = validate_records(read_corpus(fmt, FIXTURES / fmt), cfg)
    distributed = validate_records(read_corpus(fmt, FIXTURES / fmt), cfg, engine=ray_engine(batch_size=2))
    assert [v.record_id for v in distributed.kept] == [v.record_id for v in local.kept]
    assert [(v.record_id, v.reason) for v in distributed.quarantined] == [(v.record_id, v.reason) for v in local.quarantined]
    assert [v.image_sha256 for v in distributed.kept] == [v.image_sha256 for v in local.kept]


def test_ray_engine_returns_clipped_records_and_their_counts(ray_session):
    # TextDiffuser's sample 27197/271975131 has a box past the image edge: validation clips it, and
    # the clipped record (not the one the driver sent) must come back from the workers.
    src = FIXTURES / "real" / "mario"
    local = validate_records(read_corpus("mario", src), ValidationConfig())
    distributed = validate_records(read_corpus("mario", src), ValidationConfig(), engine=ray_engine(batch_size=2))
    assert [v.record for v in distributed.kept] == [v.record for v in local.kept]
    assert (distributed.normalisations(), distributed.clipped_boxes) == ({"clipped_ocr_box": 1, "whitespace": 1}, 1)
