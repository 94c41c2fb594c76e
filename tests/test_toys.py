import random

import torch

from common.toys import code_digest, toy_model


def _build(folder):
    torch.manual_seed(0)
    random.seed(1)
    (folder / "config.json").write_text("{}")


def _helper_a():
    return 1


def _helper_b():
    return 2


def test_toy_model_caches_and_restores_rng(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NANOREASON_CACHE", str(tmp_path))
    torch.manual_seed(123)
    random.seed(123)
    expected = (torch.rand(1).item(), random.random())
    torch.manual_seed(123)
    random.seed(123)
    first = toy_model("t", {"x": 1}, _build, code=[_helper_a])
    assert (torch.rand(1).item(), random.random()) == expected  # the build left the RNGs alone
    assert toy_model("t", {"x": 1}, _build, code=[_helper_a]) == first
    assert "reusing toy model" in capsys.readouterr().out
    assert toy_model("t", {"x": 2}, _build, code=[_helper_a]) != first  # inputs are in the key
    assert toy_model("t", {"x": 1}, _build, code=[_helper_b]) != first  # so is the code


def test_code_digest_sees_source():
    assert code_digest([_helper_a]) != code_digest([_helper_b])
    assert code_digest([_helper_a]) == code_digest([_helper_a])
