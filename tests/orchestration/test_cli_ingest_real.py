"""`genops data ingest --format mario` on TextDiffuser's real MARIO-LAION sample folders.

The published sample 27197/271975131 has an OCR box running past the image edge (x = 532 in the
512 frame), as detector output near the border does. It must be kept, clipped, flagged and counted;
boxes with no usable part in the image must still be quarantined.
"""

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestration.cli import app

REAL_MARIO = Path(__file__).resolve().parents[1] / "fixtures" / "formats" / "real" / "mario"
runner = CliRunner()


def ingest(src: Path, out: Path, *options: str):
    # A params path that does not exist: the ingest defaults apply (validation.max_bad_fraction = 0.05).
    args = ["data", "ingest", "--format", "mario", "--src", str(src), "--out", str(out),
            "--params", str(out.parent / "none.yaml"), *options]
    return runner.invoke(app, args, env={"COLUMNS": "200"})


def test_ingest_keeps_a_sample_whose_box_runs_past_the_edge_clipped_flagged_and_counted(tmp_path):
    out = tmp_path / "mario"
    result = ingest(REAL_MARIO, out)
    assert result.exit_code == 0, result.output
    assert "6 records kept, 0 quarantined" in result.output
    assert "2 of the kept normalised" in result.output
    assert "clipped_ocr_box" in result.output and "1 (1 boxes)" in result.output

    validation = json.loads((out / "validation.json").read_text())
    assert (validation["kept"], validation["quarantined"], validation["normalised"]) == (6, 0, 2)
    assert validation["normalisations"] == {"clipped_ocr_box": 1, "whitespace": 1}
    assert validation["clipped_boxes"] == 1
    assert (out / "quarantine.jsonl").read_text() == ""

    kept = {row["record"]["id"]: row["record"] for row in map(json.loads, (out / "records.jsonl").read_text().splitlines())}
    tail = kept["27197_271975131"]
    assert tail["extra"]["clipped"] is True
    assert tail["extra"]["normalised"] == ["clipped_ocr_box"]
    assert tail["extra"]["clipped_words"][0]["quad"] == [143.0, 133.0, 501.0, 82.0, 532.0, 301.0, 175.0, 352.0]
    assert tail["words"][0]["quad"] == [143.0, 133.0, 501.0, 82.0, 512.0, 301.0, 175.0, 352.0]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["all"]["count"] == 6 and stats["normalised"] == 2


@pytest.mark.parametrize(
    "box, says",
    [
        ("600,100,700,100,700,140,600,140", "lies outside the 512x512 image"),
        ("-90,-60,-10,-60,-10,-5,-90,-5", "lies outside the 512x512 image"),
        ("148,89,361,89,250,89,150,89", "is degenerate"),
        ("148,89,nan,83,362,140,150,146", "non-finite coordinates"),
    ],
    ids=["right-of-image", "above-left", "zero-area", "nan"],
)
def test_ingest_still_quarantines_boxes_with_nothing_usable_inside(tmp_path, box, says):
    src = shutil.copytree(REAL_MARIO, tmp_path / "src")
    with open(src / "27197/271975251/ocr.txt", "a") as ocr:
        ocr.write(f"GHOST {box} 0.5\n")
    out = tmp_path / "mario"
    result = ingest(src, out, "--max-bad-fraction", "0.2")
    assert result.exit_code == 0, result.output
    assert "5 records kept, 1 quarantined" in result.output
    [line] = [json.loads(row) for row in (out / "quarantine.jsonl").read_text().splitlines()]
    assert line["ref"] == "27197_271975251"
    assert line["reason"].startswith("bad_ocr_box: box of 'GHOST' ") and says in line["reason"]
    validation = json.loads((out / "validation.json").read_text())
    assert validation["reasons"] == {"bad_ocr_box": 1} and validation["clipped_boxes"] == 1


def test_ingest_refuses_the_dataset_when_unusable_boxes_pass_the_gate(tmp_path):
    src = shutil.copytree(REAL_MARIO, tmp_path / "src")
    with open(src / "27197/271975251/ocr.txt", "a") as ocr:
        ocr.write("GHOST 600,100,700,100,700,140,600,140 0.5\n")
    result = ingest(src, tmp_path / "mario")
    assert result.exit_code == 1
    assert "1 of 6 records quarantined" in result.output and "validation.max_bad_fraction" in result.output
