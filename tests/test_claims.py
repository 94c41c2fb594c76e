import json

from common.claims import claim, format_claims, write_summary


def test_claim_direction_and_margin():
    assert claim("acc rises", "acc", 0.5, 0.6)["holds"]
    assert not claim("acc rises", "acc", 0.5, 0.5)["holds"]
    assert not claim("acc rises", "acc", 0.5, 0.55, margin=0.1)["holds"]
    assert claim("ppl falls", "ppl", 9.0, 4.0, higher_is_better=False)["holds"]
    assert not claim("ppl falls", "ppl", 4.0, 9.0, higher_is_better=False)["holds"]


def test_write_summary_round_trip(tmp_path):
    c = [claim("acc rises", "held-out accuracy", 0.25, 0.75)]
    path = write_summary(tmp_path, c, steps=3)
    data = json.loads(path.read_text())
    assert data["claims"][0] == {
        "name": "acc rises",
        "metric": "held-out accuracy",
        "baseline": 0.25,
        "result": 0.75,
        "higher_is_better": True,
        "holds": True,
    }
    assert data["steps"] == 3
    assert "0.250" in format_claims(c) and "yes" in format_claims(c)
