"""Release-format loaders of codeio.py (CodeI/O raw code), ilo.py (FLORES-200 / FLORES+) and
adaptvis.py (WhatsUp controlled-image JSON, VSR JSONL), on our own fixture rows."""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from common.data import DataError, write_jsonl

FIXTURES = Path(__file__).parent / "fixtures"


# ------------------------------------------------------------------------------------------------
# CodeI/O: hkust-nlp/CodeIO data/rawcode_1k.jsonl rows (`content` + repo_name, path, blob_id, ...)


def test_codeio_corpus_from_release_rows(tmp_path):
    from common.data import load_code_corpus, parse_unified_file

    corpus = load_code_corpus(str(FIXTURES / "codeio_rawcode.jsonl"))
    assert [c["name"] for c in corpus] == [
        "example-org/puzzles/classic/josephus.py",
        "example-org/puzzles/strings/roman.py",
        "someone/cs101-homework/week3/bubble.py",
        "someone/cs101-homework/week1/leap.py",
    ]
    assert (
        corpus[0]["source"]["path"] == "/classic/josephus.py"
        and len(corpus[0]["source"]["blob_id"]) == 40
    )
    assert parse_unified_file(corpus[0]["code"]) and not parse_unified_file(corpus[2]["code"])
    write_jsonl(
        tmp_path / "code.jsonl", [{"name": "a", "code": "x = 1"}]
    )  # the older `code` column still works
    assert load_code_corpus(str(tmp_path / "code.jsonl")) == [{"name": "a", "code": "x = 1"}]
    write_jsonl(tmp_path / "bad.jsonl", [{"repo_name": "r", "path": "/p.py", "content": ""}])
    with pytest.raises(DataError, match=r"bad\.jsonl:1: field 'content' .* missing or empty"):
        load_code_corpus(str(tmp_path / "bad.jsonl"))


def test_codeio_pipeline_runs_on_a_release_file(tmp_path, run_cmd):
    out = tmp_path / "run"
    run_cmd(
        [
            sys.executable,
            "codeio.py",
            "--corpus",
            str(FIXTURES / "codeio_rawcode.jsonl"),
            "--output_dir",
            str(out),
            "--max_new_tokens",
            "8",
            "--pairs_per_function",
            "1",
            "--stages",
            "rewrite,io,prompts",
        ],
        timeout=300,
    )
    rewrite = [json.loads(line) for line in (out / "rewrite.jsonl").read_text().splitlines()]
    assert len(rewrite) == 4 and all(r["source"]["repo_name"] in r["name"] for r in rewrite)
    assert (
        sum(r["status"] == "ok" for r in rewrite) == 3
    )  # three unified files; the tiny model's rewrite fails
    prompts = (out / "prompts.jsonl").read_text().splitlines()
    assert prompts and all(
        json.loads(p)["name"].startswith("example-org/") or "cs101" in p for p in prompts
    )


# ------------------------------------------------------------------------------------------------
# ILO: FLORES-200 (<split>/<lang>.<split> text), FLORES+ (<split>/<lang>.parquet rows, `text`)


def flores_args(data, languages=""):
    return SimpleNamespace(
        data=str(data), data_split="dev", languages=languages, text_field="text", lang_field="lang"
    )


def test_flores_layouts_give_the_same_rows(tmp_path):
    import datasets

    from ilo import load_parallel

    plain, _ = load_parallel(
        flores_args(FIXTURES / "flores200")
    )  # FLORES-200 release: dev/<lang>.dev
    assert len(plain) == 9 and {r["lang"] for r in plain} == {"eng_Latn", "fra_Latn", "deu_Latn"}
    assert plain[3] == {"lang": "eng_Latn", "text": "The river rose after three days of rain."}
    plus, _ = load_parallel(
        flores_args(FIXTURES / "flores_plus", "eng_Latn,fra_Latn")
    )  # FLORES+ rows
    assert plus == [r for r in plain if r["lang"] in ("eng_Latn", "fra_Latn")]
    for lang in (
        "eng_Latn",
        "deu_Latn",
    ):  # a hub snapshot: <lang>/dev-*.parquet with facebook/flores' `sentence`
        rows = [{"id": i, "sentence": r["text"]} for i, r in enumerate(plain) if r["lang"] == lang]
        (tmp_path / "snap" / lang).mkdir(parents=True)
        datasets.Dataset.from_list(rows).to_parquet(
            str(tmp_path / "snap" / lang / "dev-00000-of-00001.parquet")
        )
        datasets.Dataset.from_list([{"id": 0, "sentence": "x"}]).to_parquet(
            str(tmp_path / "snap" / lang / "devtest.parquet")
        )
    snap, _ = load_parallel(flores_args(tmp_path / "snap"))
    assert snap == [r for r in plain if r["lang"] in ("deu_Latn", "eng_Latn")]
    with pytest.raises(ValueError, match=r"--languages: \['spa_Latn'\] not found"):
        load_parallel(flores_args(FIXTURES / "flores200", "eng_Latn,spa_Latn"))
    with pytest.raises(ValueError, match="a hub data set needs --languages"):
        load_parallel(flores_args("openlanguagedata/flores_plus"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no FLORES files"):
        load_parallel(flores_args(tmp_path / "empty"))


# ------------------------------------------------------------------------------------------------
# AdaptVis: WhatsUp's controlled_images_dataset.json and VSR's test.jsonl as released


def test_whatsup_release_json_becomes_adaptvis_questions(tmp_path):
    from adaptvis import load_real_rows, whatsup_correct

    args = SimpleNamespace(
        task="whatsup",
        data=str(FIXTURES / "whatsup/controlled_images_dataset.json"),
        annotations="",
        image_root="whatsup",
    )
    rows = load_real_rows(args)
    assert [r["answer"] for r in rows] == ["On", "Left", "Front"]
    assert rows[0]["question"] == (
        "Where is the teapot in relation to the stool? Answer with left, right, on or under."
    )
    assert rows[1]["question"].startswith("Where is the red ball in relation to the lamp?")
    assert rows[2]["question"].endswith("Answer with left, right, front or behind.")
    assert rows[2]["options"] == ["left", "right", "front", "behind"]
    assert rows[0]["image_path"] == "whatsup/data/controlled_images/teapot_on_stool.jpeg"
    assert whatsup_correct("The teapot is on the stool.", rows[0]["answer"])
    (tmp_path / "bad.json").write_text(
        json.dumps([{"image_path": "a_on_b.jpeg", "caption_options": ["A a near b"]}])
    )
    with pytest.raises(
        DataError, match=r"bad\.json row 0: needs 'image_path' and 'caption_options'"
    ):
        load_real_rows(SimpleNamespace(**{**vars(args), "data": str(tmp_path / "bad.json")}))


def test_vsr_release_jsonl(tmp_path):
    from adaptvis import load_real_rows

    (tmp_path / "val2017").mkdir()
    (tmp_path / "val2017" / "000000654321.jpg").write_bytes(
        b""
    )  # only the link's path exists for row 2
    rows = load_real_rows(
        SimpleNamespace(
            task="vsr",
            data=str(FIXTURES / "vsr/test.jsonl"),
            annotations="",
            image_root=str(tmp_path),
        )
    )
    assert [(r["label"], r["answer"], r["relation"]) for r in rows] == [
        (1, "Yes", "on top of"),
        (0, "No", "behind"),
    ]
    assert rows[0]["image_path"] == str(
        tmp_path / "000000123456.jpg"
    )  # neither exists: the `image` name
    assert rows[1]["image_path"] == str(tmp_path / "val2017" / "000000654321.jpg")
    assert rows[1]["question"].endswith("Answer with yes or no: The bicycle is behind the bench.")


# ------------------------------------------------------------------------------------------------
# zero_rl / bstar training files: MATH (problem + boxed solution), GSM8K ("#### N"), no field flags


def test_math_scripts_read_release_training_files(tmp_path):
    import bstar
    from common.grpo_plumbing import load_task_rows  # zero_rl's

    math_rows = [
        {
            "problem": f"Compute ${i} + {i}$.",
            "solution": f"It is $\\boxed{{{2 * i}}}$.",
            "level": f"Level {1 + i % 5}",
            "type": "Prealgebra",
        }
        for i in range(10)
    ]
    write_jsonl(tmp_path / "math_train.jsonl", math_rows)
    args = SimpleNamespace(
        data=str(tmp_path / "math_train.jsonl"),
        data_split="train",
        task="math",
        question_field="question",
        answer_field="answer",
        level_field="level",
        levels="3-5",
        eval_data="",
        num_eval_prompts=2,
    )
    train, held_out = load_task_rows(args)
    kept = [i for i in range(10) if 3 <= 1 + i % 5 <= 5]
    assert [r["answer"] for r in train + held_out] == [str(2 * i) for i in kept]
    assert train[0]["question"] == f"Compute ${kept[0]} + {kept[0]}$." and len(held_out) == 2
    gsm = FIXTURES / "simplerl_eval/gsm8k/test.jsonl"
    rows, evals = bstar.load_task(
        SimpleNamespace(
            data=str(gsm),
            question_field="question",
            answer_field="answer",
            eval_data=str(tmp_path / "math_train.jsonl"),
            eval_queries=2,
        )
    )
    assert [r["answer"] for r in rows] == ["38", "1200", "25", "4"] and [
        r["answer"] for r in evals
    ] == ["0", "2"]
