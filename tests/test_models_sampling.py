"""common/models.py and common/sampling.py: tiny models reload offline; the HF sampler's
contract."""

import json

import torch
from PIL import Image

from common.models import load_model, load_processor, load_tokenizer, make_tiny_lm, make_tiny_vlm
from common.sampling import HFSampler, make_sampler, render_prompt
from common.train import pad_batch, token_logprobs


def test_tiny_lm_reloads_through_auto_classes_with_chat_template():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = make_tiny_lm()
    assert make_tiny_lm() == path  # cached: built once
    model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert tok.pad_token == tok.eos_token == "<|endoftext|>"
    text = tok.apply_chat_template(
        [{"role": "user", "content": "2+2?"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    assert tok.tokenize("123") == ["1", "2", "3"]  # digits one per token
    assert (
        tok.decode(tok("héllo ∑ 12", add_special_tokens=False).input_ids) == "héllo ∑ 12"
    )  # byte-level: lossless


def test_tiny_vlm_reloads_and_runs_with_its_processor():
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = make_tiny_vlm()
    model, proc = (
        AutoModelForImageTextToText.from_pretrained(path),
        AutoProcessor.from_pretrained(path),
    )
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    msgs = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color?"}]}
    ]
    text = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert "<image>" in text
    enc = proc(text=[text], images=[Image.new("RGB", (90, 70), "red")], return_tensors="pt")
    assert (enc["input_ids"] == model.config.image_token_id).sum() == 16
    assert model(**enc).logits.shape[:2] == enc["input_ids"].shape


def test_hf_sampler_n_completions_stop_strings_finish_reason_and_logprobs():
    path = make_tiny_lm()
    tok, model = load_tokenizer(path), load_model(path)
    torch.manual_seed(0)
    sampler = make_sampler("hf", model, tok)
    prompts = ["12 + 3 =", [{"role": "user", "content": "What is 2 + 2?"}]]
    out = sampler.generate(prompts, n=4, temperature=1.0, max_new_tokens=12, stop=["e"])
    assert len(out) == 2 and all(len(g) == 4 for g in out)
    for g in out:
        for c in g:
            assert c.finish_reason in ("stop", "length")
            assert len(c.logprobs) == len(c.token_ids) <= 12
            if c.finish_reason == "length":
                assert len(c.token_ids) == 12 and "e" not in c.text
            elif "e" in c.text:
                assert c.text.endswith("e")  # cut right after the stop string, which is kept
    # the sampler's log-probs are the teacher-forced ones of common.train
    prompt_ids = [
        tok(render_prompt(tok, p), add_special_tokens=False).input_ids
        for p in prompts
        for _ in range(4)
    ]
    comps = [c for g in out for c in g]
    ids, att, comp = pad_batch(prompt_ids, [c.token_ids for c in comps], tok.pad_token_id)
    lp = token_logprobs(model, ids, att)
    for row, c in enumerate(comps):
        start = len(prompt_ids[row]) - 1
        assert torch.allclose(
            lp[row, start : start + len(c.token_ids)], torch.tensor(c.logprobs), atol=1e-4
        )


def test_hf_sampler_greedy_is_deterministic_and_eos_gives_stop():
    path = make_tiny_lm()
    tok, model = load_tokenizer(path), load_model(path)
    sampler = HFSampler(model, tok)
    a = sampler.generate(["hello"], n=2, temperature=0, max_new_tokens=8)
    b = sampler.generate(["hello"], n=1, temperature=0, max_new_tokens=8)
    assert a[0][0].token_ids == a[0][1].token_ids == b[0][0].token_ids
    # force an immediate eos through the model's bias: the completion is just eos, reason "stop"
    model.lm_head.register_forward_hook(
        lambda mod, inp, out: out.index_add(
            -1, torch.tensor([tok.eos_token_id]), torch.full((*out.shape[:-1], 1), 1e4)
        )
    )
    c = sampler.generate(["hello"], n=1, temperature=1.0, max_new_tokens=8)[0][0]
    assert c.token_ids == [tok.eos_token_id] and c.finish_reason == "stop" and c.text == ""


def test_hf_sampler_with_images_on_tiny_vlm():
    path = make_tiny_vlm()
    proc, model = load_processor(path), load_model(path, vlm=True)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}]
    imgs = [Image.new("RGB", (64, 64), c) for c in ("red", "blue")]
    out = HFSampler(model, proc).generate(
        [msgs, msgs], n=2, temperature=1.0, max_new_tokens=6, images=imgs
    )
    assert [len(g) for g in out] == [2, 2] and all(
        len(c.logprobs) == len(c.token_ids) for g in out for c in g
    )


def test_vllm_sampler_without_vllm_says_how_to_install():
    import importlib.util

    import pytest

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    with pytest.raises(ImportError, match="requirements-vllm.txt"):
        make_sampler("vllm", model_path=make_tiny_lm())
    with pytest.raises(ValueError, match="--sampler"):
        make_sampler("sglang")


def test_shared_prefill_draws_what_a_prefill_per_sample_draws():
    """n samples from one prefill + an expanded KV cache: same seed, same completions and
    log-probs as num_return_sequences=n (which prefills each sample); left-padded prompts of
    different lengths."""
    path = make_tiny_lm()
    tok, model = load_tokenizer(path), load_model(path)
    prompts = ["12 + 3 =", [{"role": "user", "content": "What is 2 + 2?"}], "7"]
    out = {}
    for shared in (False, True):
        torch.manual_seed(3)
        sampler = HFSampler(model, tok, share_prefill=shared)
        out[shared] = sampler.generate(prompts, n=4, max_new_tokens=10)
    flat = {k: [c for g in v for c in g] for k, v in out.items()}
    assert [c.token_ids for c in flat[True]] == [c.token_ids for c in flat[False]]
    for a, b in zip(flat[True], flat[False]):
        assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5)
    assert len({tuple(c.token_ids) for c in flat[True]}) > 3  # real samples, not one repeated


def test_lockstep_sharding_and_draining_on_two_ranks(run_cmd, torchrun_cmd, tmp_path):
    run_cmd([*torchrun_cmd, "tests/_lockstep_worker.py", str(tmp_path / "out.json")], timeout=240)
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["gathered"] == [2] * 5  # 5 prompts (3 + 2 over the ranks), n=2 each, in order
    # padding dropped; rank 1 joined rank 0's extra rounds with no prompts of its own
    assert result["local"] == [[1, 2, 3], [1]]
