"""The validated rankings the screen reads: the default is the protocol's pick, and every ranking prints its numbers."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from traitwatch.cli.app import app
from traitwatch.screen.validated import best_available, default_ranking, describe, validated_rankings

FAST = ["--model", "tiny-random", "--dtype", "float32", "--max-new-tokens", "2", "--batch-size", "4"]


def test_the_default_is_the_ranking_with_the_best_validated_score():
    known = validated_rankings()
    assert {"risk", "loss", "ratio"} <= set(known)
    # the benchmark picks by the inner score on every cell; for these fixed scores that is the table's mean AUROC
    assert default_ranking() == max(known, key=lambda r: known[r].auroc)
    for v in known.values():
        assert v.auroc_ci[0] <= v.auroc <= v.auroc_ci[1] and v.worst_auroc <= v.auroc


def test_best_available_takes_the_best_ranking_a_results_file_holds():
    known = validated_rankings()
    assert best_available(["risk"]) == "risk"
    assert best_available(["risk", "loss"]) == max(["risk", "loss"], key=lambda r: known[r].auroc)
    assert best_available(["monitor"]) == "risk"  # nothing validated: the trait risk, as before


def test_describe_prints_the_rankings_numbers():
    v = validated_rankings()["risk"]
    line = describe("risk")
    assert f"{v.auroc:.3f}" in line and v.worst_type in line and "held out by poison type and base" in line
    assert "(the default" in describe(default_ranking()) and "(the default" not in describe("risk")
    assert "not validated" in describe("monitor")


def test_screen_without_rank_by_uses_the_default_and_says_what_it_scored(basis_dir, chat_file, tmp_path):
    summary = tmp_path / "s.json"
    res = CliRunner().invoke(app, ["screen", str(chat_file), "--basis", str(basis_dir), *FAST, "--top-k", "3",
                                   "--out", str(tmp_path / "r.jsonl"), "--summary-json", str(summary)],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert json.loads(summary.read_text())["rank_by"] == default_ranking()
    assert describe(default_ranking()).split(".")[0] in " ".join(res.stderr.split())
