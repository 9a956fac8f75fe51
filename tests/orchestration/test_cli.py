"""The `genops` command line: help everywhere, and `data ingest` on a real-format corpus."""

import json
from pathlib import Path

from typer.testing import CliRunner

from orchestration.cli import app

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "formats"
runner = CliRunner()


def test_help_lists_the_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("data", "train", "sample", "demo", "ui", "metrics"):
        assert command in result.output
    for group in (["data"], ["data", "ingest"], ["data", "validate"], ["train"], ["sample"]):
        assert runner.invoke(app, [*group, "--help"]).exit_code == 0


def test_ingest_keeps_good_records_and_quarantines_bad_ones(tmp_path):
    out = tmp_path / "cc3m"
    result = runner.invoke(app, ["data", "ingest", "--format", "cc3m", "--src", str(FIXTURES / "cc3m"), "--out", str(out),
                                 "--params", str(tmp_path / "none.yaml"), "--max-bad-fraction", "0.9"])
    assert result.exit_code == 0, result.output
    assert "2 records kept, 8 quarantined" in result.output
    reasons = [json.loads(line)["reason"].split(":")[0] for line in (out / "quarantine.jsonl").read_text().splitlines()]
    assert sorted(reasons) == sorted(["corrupt_image", "duplicate_image", "empty_caption", "missing_image",
                                      "small_image", "unreadable", "unreadable", "unreadable"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert sum(s["count"] for s in manifest["splits"].values()) == 2
    assert json.loads((out / "stats.json").read_text())["all"]["count"] == 2


def test_ingest_fails_clearly_when_too_much_is_bad(tmp_path):
    result = runner.invoke(app, ["data", "ingest", "--format", "cc3m", "--src", str(FIXTURES / "cc3m"),
                                 "--out", str(tmp_path / "o"), "--params", str(tmp_path / "none.yaml")])
    assert result.exit_code == 1
    assert "validation.max_bad_fraction" in result.output
    assert (tmp_path / "o" / "quarantine.jsonl").is_file()


def test_ingest_names_a_bad_format_and_a_missing_source(tmp_path):
    bad = runner.invoke(app, ["data", "ingest", "--format", "coco", "--src", str(tmp_path), "--out", str(tmp_path / "o")])
    assert bad.exit_code == 2 and "--format 'coco'" in bad.output
    missing = runner.invoke(app, ["data", "ingest", "--format", "cc3m", "--src", str(tmp_path / "nope"),
                                  "--out", str(tmp_path / "o"), "--params", str(tmp_path / "none.yaml")])
    assert missing.exit_code == 2 and "nope" in missing.output
