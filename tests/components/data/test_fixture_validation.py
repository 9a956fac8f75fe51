"""Validation of the committed real-format fixtures (tests/fixtures/formats/README.md lists every record).

Every bad input lands in quarantine with its reason, and nothing valid is lost.
"""

from pathlib import Path

import pytest

from components.data.formats import FORMATS, read_corpus
from components.data.validation import ValidationConfig, validate_records

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "formats"

EXPECTED = {
    "cc3m": (2, {"corrupt_image": 1, "duplicate_image": 1, "empty_caption": 1, "missing_image": 1, "small_image": 1, "unreadable": 3}),
    "vist": (1, {"corrupt_image": 1, "missing_image": 1, "unreadable": 4}),
    "vist-sis": (1, {"missing_image": 1, "unreadable": 2}),
    "mmdialog": (1, {"missing_image": 1, "unreadable": 4}),
    "paraprompts": (2, {"empty_caption": 1, "unreadable": 3}),
    "paraimage": (2, {"corrupt_image": 1, "duplicate_image": 1, "empty_caption": 1, "missing_image": 1, "unreadable": 3}),
    "mario": (1, {"bad_charseg": 1, "corrupt_image": 1, "duplicate_image": 1, "empty_caption": 1, "missing_image": 1, "unreadable": 5}),
    "mario-eval": (4, {"empty_caption": 1, "no_quoted_words": 1, "unreadable": 1}),
    "laion-parquet": (2, {"corrupt_image": 1, "duplicate_image": 1, "empty_caption": 1, "missing_image": 1, "unreadable": 3}),
}


def test_every_format_has_a_fixture():
    assert set(EXPECTED) == set(FORMATS)


@pytest.mark.parametrize("fmt", sorted(EXPECTED))
def test_fixture_records_are_kept_or_quarantined_with_their_reason(fmt):
    cfg = ValidationConfig(require_quoted_words=fmt == "mario-eval")
    result = validate_records(read_corpus(fmt, FIXTURES / fmt), cfg)
    kept, reasons = EXPECTED[fmt]
    assert len(result.kept) == kept
    assert result.reasons() == reasons
    assert all(v.reason for v in result.quarantined)
    # the duplicate is the later copy; the original stays
    for verdict in result.quarantined:
        if verdict.reason_code == "duplicate_image":
            original = verdict.reason.rsplit(" ", 1)[-1]
            assert original in {v.record_id for v in result.kept}
