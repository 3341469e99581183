"""`ticket-rag eval-duplicates --pairs`: a team chooses DUPLICATE_THRESHOLD on its own labelled pairs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import DATASETS
from ticket_rag.tools.cli import main

ASKUBUNTU = DATASETS / "duplicates" / "askubuntu" / "dev_pairs.tsv"


def _first_pairs(target: Path, rows: int = 60) -> Path:
    lines = ASKUBUNTU.read_text(encoding="utf-8").splitlines(keepends=True)
    target.write_text("".join(lines[: rows + 1]), encoding="utf-8")
    return target


def test_the_threshold_is_chosen_on_the_teams_own_pairs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pairs = _first_pairs(tmp_path / "our_pairs.tsv")
    assert main(["eval-duplicates", "--pairs", str(pairs), "--folds", "3", "--output", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    assert report["chosen_on"] == "our_pairs.tsv" and set(report["results"]["cosine"]) == {"our_pairs.tsv"}
    chosen = report["selection"]["cosine"]["threshold_on_all"]
    # these Stack Exchange duplicates sit far below the GitBugs-chosen default, and the pairs say so
    assert chosen < 0.5 < report["configured_threshold"]
    assert report["results"]["cosine"]["our_pairs.tsv"]["at_chosen"]["f1"] > 0.85
    assert "cross-validation on our_pairs.tsv" in capsys.readouterr().out


def test_pairs_that_cannot_be_read_are_refused_naming_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["eval-duplicates", "--pairs", str(tmp_path / "missing.tsv")]) == 2
    assert "--pairs" in capsys.readouterr().err
    few = tmp_path / "few.tsv"
    few.write_text("text_a\ttext_b\tlabel\nthe vpn drops\tvpn keeps dropping\t1\nprinter jam\tvpn drops\t0\n")
    assert main(["eval-duplicates", "--pairs", str(few)]) == 2
    assert "at least 5 duplicates" in capsys.readouterr().err
