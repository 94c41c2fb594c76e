"""common/data.py: every supported format loads; bad files name the file, line/row and field."""

import json

import pytest

from common.data import (
    DataError,
    load_located_rows,
    load_rows,
    make_arithmetic_rows,
    make_countdown_rows,
    read_jsonl_tolerant,
    write_jsonl,
)

ROWS = [{"question": "1+1?", "answer": "2"}, {"question": "2+3?", "answer": "5"}]


def test_each_format_loads(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", ROWS)
    (tmp_path / "b.json").write_text(json.dumps(ROWS))
    import datasets

    datasets.Dataset.from_list(ROWS).to_parquet(str(tmp_path / "c.parquet"))
    for name in ("a.jsonl", "b.json", "c.parquet"):
        assert load_rows(str(tmp_path / name), required=("question", "answer")) == ROWS
    assert len(load_rows(str(tmp_path))) == 6  # a folder: all files
    assert load_rows(str(tmp_path / "a.jsonl"), limit=1) == ROWS[:1]


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(ROWS[0]) + "\n{not json\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: not valid JSON"):
        load_rows(str(bad))


def test_empty_file_and_missing_field(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="empty.jsonl: no rows"):
        load_rows(str(tmp_path / "empty.jsonl"))
    write_jsonl(tmp_path / "m.jsonl", [ROWS[0], {"question": "x"}])
    with pytest.raises(DataError, match=r"m\.jsonl:2: missing field 'answer'"):
        load_rows(str(tmp_path / "m.jsonl"), required=("question", "answer"))
    with pytest.raises(DataError, match="no such file"):
        load_rows(str(tmp_path / "nope.jsonl"))


def test_tolerant_reader_drops_only_a_cut_off_last_line(tmp_path):
    p = tmp_path / "gen.jsonl"
    p.write_text(json.dumps({"a": 1}) + "\n" + '{"a": 2, "b"')
    assert read_jsonl_tolerant(p) == [{"a": 1}]
    p.write_text('{"a": 1\n' + json.dumps({"a": 2}) + "\n")
    with pytest.raises(DataError, match="gen.jsonl:1"):
        read_jsonl_tolerant(p)


def test_append_after_a_kill_drops_the_fragment(tmp_path):
    p = tmp_path / "gen.jsonl"
    p.write_text(json.dumps({"a": 1}) + "\n" + '{"a": 2, "b"')  # killed while writing record 2
    write_jsonl(p, [{"a": 2}, {"a": 3}], mode="a")  # the rerun writes it again
    assert read_jsonl_tolerant(p) == [{"a": 1}, {"a": 2}, {"a": 3}]
    p.write_text('{"a": 1')  # only a fragment
    write_jsonl(p, [{"a": 1}], mode="a")
    assert read_jsonl_tolerant(p) == [{"a": 1}]


def test_toy_generators_are_deterministic_and_correct():
    assert make_arithmetic_rows(5, seed=3) == make_arithmetic_rows(5, seed=3)
    for r in make_arithmetic_rows(50, seed=1, ops="+-*", num_terms=3):
        assert str(eval(r["expression"])) == r["answer"]
    for r in make_countdown_rows(50, seed=2):
        assert eval(r["answer"]) == r["target"]
        assert sorted(int(t) for t in __import__("re").findall(r"\d+", r["answer"])) == sorted(
            r["nums"]
        )


def test_located_rows_say_where_each_row_is(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", ROWS)
    (tmp_path / "b.json").write_text(json.dumps(ROWS))
    where = [w for w, _ in load_located_rows(str(tmp_path / "a.jsonl"))]
    assert where == [f"{tmp_path}/a.jsonl:1", f"{tmp_path}/a.jsonl:2"]
    assert [w for w, _ in load_located_rows(str(tmp_path / "b.json"))][
        1
    ] == f"{tmp_path}/b.json row 1"
    assert [
        r for _, r in load_located_rows(str(tmp_path))
    ] == ROWS + ROWS  # a folder: every file, sorted
