"""zero_rl.py: the paper's functions pinned to hand-computed values, garbage-proof rewards, the
LLM-judge path with the tiny model, data loading errors, and end-to-end runs (learning, resume,
2-process torchrun)."""

import json
import math
import sys

import pytest
import torch
from transformers import HfArgumentParser

import zero_rl as Z
from common import evaluation as E
from common import rewards as R
from common.grpo_plumbing import load_task_rows, micro_spans, response_logprobs
from common.models import load_model, load_tokenizer, make_tiny_lm
from common.sampling import HFSampler
from common.sort_digits import TOY_HELD_OUT, make_toy_rows
from common.train import Dist, gradient_checkpointing_on, shard_model, token_logprobs

# --------------------------------------------------------------------------------------------------
# GRPO advantages (verl compute_grpo_outcome_advantage; Dr. GRPO without the std)


def test_grpo_advantages_spec_case():
    adv = Z.grpo_advantages(torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0]), 8)
    assert adv[0].item() == pytest.approx(2.4749, abs=1e-4)  # (1 - 0.125) / (0.35355 + 1e-6)
    assert torch.allclose(adv[1:], torch.full((7,), -0.35355), atol=1e-4)


def test_grpo_advantages_equal_group_is_zero_and_groups_are_independent():
    assert (
        Z.grpo_advantages(torch.full((8,), 0.7), 8).abs().max() < 1e-6
    )  # float32 mean/std would give 0.056
    assert torch.equal(Z.grpo_advantages(torch.zeros(8), 8), torch.zeros(8))
    adv = Z.grpo_advantages(
        torch.tensor([1.0, 0.0, 3.0, 3.0]), 2
    )  # unbiased std of [1, 0] = 0.70711
    assert torch.allclose(adv, torch.tensor([0.70711, -0.70711, 0.0, 0.0]), atol=1e-4)
    assert torch.allclose(
        Z.grpo_advantages(torch.tensor([2.0, -1.0]), 1), torch.tensor([2.0, -1.0]), atol=1e-5
    )  # G=1: mean 0, std 1
    with pytest.raises(ValueError, match="groups of 8"):
        Z.grpo_advantages(torch.ones(7), 8)


def test_dr_grpo_advantages_are_not_divided_by_the_std():
    adv = Z.grpo_advantages(torch.tensor([1.0, 0, 0, 0, 0.5, 0.5, 0.5, 1.5]), 4, scale_by_std=False)
    # group 1: mean 0.25; group 2: mean 0.75 (with the std it would be [-0.5, -0.5, -0.5, 1.5])
    assert torch.allclose(adv, torch.tensor([0.75, -0.25, -0.25, -0.25, -0.25, -0.25, -0.25, 0.75]))
    assert torch.equal(
        Z.grpo_advantages(torch.tensor([2.0, -1.0]), 1, scale_by_std=False),
        torch.tensor([2.0, -1.0]),
    )  # G=1: mean 0 (verl)


def test_dr_grpo_loss_type_turns_the_std_off_unless_overridden():
    def parse(*flags):
        return HfArgumentParser(Z.Args).parse_args_into_dataclasses(list(flags))[0]

    assert Z.scales_by_std(parse()) is True
    assert Z.scales_by_std(parse("--loss_type", "dr_grpo")) is False
    forced = parse("--loss_type", "dr_grpo", "--scale_rewards_by_std", "true")
    assert Z.scales_by_std(forced) is True
    assert Z.scales_by_std(parse("--scale_rewards_by_std", "false")) is False


# --------------------------------------------------------------------------------------------------
# PPO-clip, k3 KL, loss aggregation


def test_ppo_clip_ratio_one_is_minus_advantage():
    logp = torch.log(torch.tensor([[0.5, 0.25]]))
    loss, ratio = Z.ppo_clip_loss(logp, logp.clone(), torch.tensor([1.5]))
    assert torch.allclose(ratio, torch.ones(1, 2)) and torch.allclose(
        loss, torch.full((1, 2), -1.5)
    )


def test_ppo_clip_clipped_and_unclipped_sides():
    old = torch.zeros(4, 1)
    logp = torch.log(torch.tensor([[1.5], [1.5], [0.5], [0.5]])).requires_grad_()
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0])
    loss, _ = Z.ppo_clip_loss(logp, old, adv, 0.2, 0.2)
    # ratio 1.5: A=+1 -> clipped at 1.2; A=-1 -> unclipped 1.5
    # ratio 0.5: A=-1 -> clipped at 0.8; A=+1 -> unclipped 0.5
    assert torch.allclose(loss.squeeze(1), torch.tensor([-1.2, 1.5, 0.8, -0.5]))
    loss.sum().backward()
    assert logp.grad[0].item() == 0 and logp.grad[2].item() == 0  # clipped tokens carry no gradient
    assert logp.grad[1].item() == pytest.approx(1.5) and logp.grad[3].item() == pytest.approx(-0.5)
    high, _ = Z.ppo_clip_loss(
        torch.log(torch.tensor([[1.25]])), torch.zeros(1, 1), torch.tensor([1.0]), 0.2, 0.28
    )
    assert high.item() == pytest.approx(-1.25)  # clip-higher: 1.25 < 1 + 0.28


def test_k3_kl_hand_values():
    logp, ref = torch.log(torch.tensor([0.5, 0.3])), torch.log(torch.tensor([0.25, 0.3]))
    kl = Z.k3_kl(logp, ref)  # exp(-0.6931) + 0.6931 - 1 = 0.19315; equal -> 0
    assert kl[0].item() == pytest.approx(0.5 + math.log(2) - 1, abs=1e-6) and kl[
        1
    ].item() == pytest.approx(0.0, abs=1e-7)
    assert Z.k3_kl(torch.tensor([-30.0]), torch.tensor([0.0])).item() == 10.0  # clamped
    assert (Z.k3_kl(torch.randn(100), torch.randn(100)) >= 0).all()


def test_aggregate_loss_variants():
    per_token = torch.tensor([[1.0, 2.0, 3.0, 9.0], [4.0, 9.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    assert Z.aggregate_loss(per_token, mask, "dapo", 4).item() == pytest.approx(
        10 / 4
    )  # token mean
    assert Z.aggregate_loss(per_token, mask, "bnpo", 4).item() == pytest.approx(10 / 4)
    assert Z.aggregate_loss(per_token, mask, "grpo", 4).item() == pytest.approx(
        (6 / 3 + 4 / 1) / 2
    )  # sequence means
    assert Z.aggregate_loss(per_token, mask, "dr_grpo", 4).item() == pytest.approx(
        10 / (2 * 4)
    )  # / (B * max len)
    # a micro-batch of a larger mini-batch uses the mini-batch's normalisers
    assert Z.aggregate_loss(per_token, mask, "dapo", 4, num_tokens=8).item() == pytest.approx(
        10 / 8
    )
    assert Z.aggregate_loss(per_token, mask, "grpo", 4, num_seqs=4).item() == pytest.approx(6 / 4)
    with pytest.raises(ValueError, match="--loss_type"):
        Z.aggregate_loss(per_token, mask, "sum", 4)


def test_verl_micro_batch_mean_differs_from_the_dapo_token_mean():
    """Mini-batch = micro-batch A (3 tokens, losses 1 2 3) + micro-batch B (1 token, loss 4).
    dapo: every token weighs the same, (1+2+3+4)/4 = 2.5. verl (SimpleRL-Zoo's code): mean of the
    micro-batch means, (2 + 4)/2 = 3.0: B's single token weighs three times each of A's."""
    a_loss, a_mask = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[1, 1, 1]])
    b_loss, b_mask = torch.tensor([[4.0, 9.0, 9.0]]), torch.tensor([[1, 0, 0]])
    dapo = sum(
        Z.aggregate_loss(loss, m, "dapo", 3, num_tokens=4, num_seqs=2)
        for loss, m in ((a_loss, a_mask), (b_loss, b_mask))
    )
    verl = sum(
        Z.aggregate_loss(loss, m, "verl", 3, num_seqs=2, num_micro=2)
        for loss, m in ((a_loss, a_mask), (b_loss, b_mask))
    )
    assert dapo.item() == pytest.approx(2.5) and verl.item() == pytest.approx(3.0)
    whole = Z.aggregate_loss(torch.cat([a_loss, b_loss]), torch.cat([a_mask, b_mask]), "verl", 3)
    assert whole.item() == pytest.approx(2.5)  # one micro-batch: verl == dapo


def test_micro_batches_add_up_to_the_mini_batch_loss():
    torch.manual_seed(0)
    per_token, mask = torch.randn(6, 5), (torch.rand(6, 5) > 0.3).long()
    for kind in ("dapo", "grpo", "dr_grpo"):
        whole = Z.aggregate_loss(per_token, mask, kind, 5)
        parts = sum(
            Z.aggregate_loss(
                per_token[s : s + 2],
                mask[s : s + 2],
                kind,
                5,
                num_tokens=float(mask.sum()),
                num_seqs=6,
            )
            for s in range(0, 6, 2)
        )
        assert parts.item() == pytest.approx(whole.item(), abs=1e-6)


def test_length_rewards_dispatch_hand_values():
    kimi = Z.length_rewards("kimi", [100, 200, 300, 100, 200, 300], [1, 1, 1, 0, 0, 0], 3, 1000)
    assert kimi == pytest.approx([0.5, 0.0, -0.5, 0.0, 0.0, -0.5])
    assert Z.length_rewards(
        "dapo_overlong", [700, 900, 1000], [1, 1, 1], 3, 1000, buffer=200
    ) == pytest.approx([0.0, -0.5, -1.0])
    assert Z.length_rewards("cosine", [0, 500], [1, 0], 2, 1000) == pytest.approx([2.0, -5.0])
    assert Z.length_rewards("l1_exact", [1500], [1], 1, 4000, budgets=[1000]) == pytest.approx(
        [0.85]
    )
    assert Z.length_rewards("l1_max", [500], [1], 1, 4000, budgets=[1000]) == pytest.approx([0.65])
    assert Z.length_rewards("none", [5, 6], [1, 0], 2, 16) == [0.0, 0.0]
    with pytest.raises(ValueError, match="--overlong_buffer"):
        Z.length_rewards("dapo_overlong", [5], [1], 1, 16, buffer=4096)
    with pytest.raises(ValueError, match="--length_reward"):
        Z.length_rewards("longer", [5], [1], 1, 16)


def test_total_rewards_none_and_kimi_add_to_the_task_reward():
    assert Z.total_rewards("none", [1.0, 0.1, 0.0], [1, 0, 0], [5, 6, 7], 3, 16) == [1.0, 0.1, 0.0]
    # Kimi (G=3): length rewards [0.5, 0, -0.5] correct, [0, 0, -0.5] wrong; weight 0.5, on 1/0
    flags = [1, 1, 1, 0, 0, 0]
    kimi = Z.total_rewards("kimi", flags, flags, [100, 200, 300] * 2, 3, 1000, coef=0.5)
    assert kimi == pytest.approx([1.25, 1.0, 0.75, 0.0, 0.0, -0.25])


def test_total_rewards_dapo_adds_the_overlong_penalty():
    # L_max 1000, L_c 200: 700 -> 0, 900 -> -0.5, 1000 -> -1; added (coef 2) to the task reward
    args = ([1.0, 1.0, 0.0], [1, 1, 0], [700, 900, 1000], 3, 1000)
    assert Z.total_rewards("dapo_overlong", *args, buffer=200) == pytest.approx([1.0, 0.5, -1.0])
    doubled = Z.total_rewards("dapo_overlong", *args, buffer=200, coef=2.0)
    assert doubled == pytest.approx([1.0, 0.0, -2.0])


def test_total_rewards_cosine_is_the_whole_reward():
    # correct: 2 -> 1 over L; wrong: -10 -> 0; L + 16 >= L_max: -10. Not 1 + cosine (counted twice),
    # and countdown's 0.1 for a tagged wrong equation plays no part (-5.0, not -4.9).
    task, correct = [1.0, 1.0, 0.1, 0.0, 1.0], [1, 1, 0, 0, 1]
    got = Z.total_rewards("cosine", task, correct, [0, 500, 500, 250, 984], 5, 1000)
    assert got == pytest.approx([2.0, 1.5, -5.0, -5 * (1 + math.cos(math.pi / 4)), -10.0])
    assert got[3] == pytest.approx(-8.5355, abs=1e-4)
    with pytest.raises(ValueError, match="--length_reward_coef"):
        Z.total_rewards("cosine", task, correct, [0] * 5, 5, 1000, coef=0.5)


def test_total_rewards_l1_is_the_whole_reward():
    # alpha 3e-4, n_gold 1000. Exact: c - alpha |n_gold - L|: 1 - 0.15, 0 - 0.3 (not 1.85)
    exact = Z.total_rewards(
        "l1_exact", [1.0, 0.0], [1, 0], [1500, 2000], 1, 4000, budgets=[1000] * 2
    )
    assert exact == pytest.approx([0.85, -0.30])
    # Max: c * clip(alpha (n_gold - L) + 0.5, 0, 1); a correct answer over budget gets 0.2, not 1
    lengths = [1000, 500, 2000, 3000, 500]
    flags = [1, 1, 1, 1, 0]
    got = Z.total_rewards("l1_max", flags, flags, lengths, 1, 4000, budgets=[1000] * 5)
    assert got == pytest.approx([0.5, 0.65, 0.2, 0.0, 0.0])
    with pytest.raises(ValueError, match="budget"):
        Z.total_rewards("l1_max", [1.0], [1], [500], 1, 4000)
    with pytest.raises(ValueError, match="--length_reward_coef"):
        Z.total_rewards("l1_exact", [1.0], [1], [500], 1, 4000, budgets=[1000], coef=2.0)


def test_total_rewards_adds_the_repetition_penalty_and_checks_lengths():
    plain = Z.total_rewards("none", [1.0, 0.0], [1, 0], [5, 5], 2, 16, repetition=[-0.2, 0.0])
    assert plain == [0.8, 0.0]
    cosine = Z.total_rewards("cosine", [0.0], [0], [500], 1, 1000, repetition=[-0.15])
    assert cosine == pytest.approx([-5.15])
    with pytest.raises(ValueError, match="one of each per completion"):
        Z.total_rewards("none", [1.0, 0.0], [1], [5, 5], 2, 16)


def test_repetition_penalty_hand_values():
    # n=2 over 1 2 3 1 2 3 1: the 2-grams at 3, 4, 5 repeat, covering tokens 3..6 -> 4 x -0.05
    assert R.repetition_penalty([1, 2, 3, 1, 2, 3, 1], 2, -0.05) == pytest.approx(-0.2)
    # n=3 over 1 2 3 4 1 2 3 5: only (1 2 3) at 4 repeats, tokens 4..6 -> 3 x -0.05
    assert R.repetition_penalty([1, 2, 3, 4, 1, 2, 3, 5], 3, -0.05) == pytest.approx(-0.15)
    assert R.repetition_penalty([5] * 10, 3, -0.05) == pytest.approx(-0.45)  # tokens 1..9, once
    assert R.repetition_penalty([1, 2, 3, 4], 2, -0.05) == 0.0
    assert R.repetition_penalty([1, 1], 5, -1.0) == 0.0
    with pytest.raises(ValueError, match="--repetition_penalty"):
        R.repetition_penalty([1, 1, 1], 1, 0.05)


def test_kimi_length_reward_warm_up():
    args = Z.Args(length_reward="kimi", length_reward_warmup_steps=2)
    kinds = [Z.length_reward_at(args, step) for step in (1, 2, 3, 10)]
    assert kinds == ["none", "none", "kimi", "kimi"]
    assert Z.length_reward_at(Z.Args(length_reward="kimi"), 1) == "kimi"  # no warm-up by default


def test_step_rows_depend_only_on_the_position():
    """A resumed run sees the rows and L1 budgets an uninterrupted one would (no state but seed)."""
    rows = [{"question": str(i)} for i in range(10)]
    args = Z.Args(prompts_per_step=4)
    fresh = Z.step_rows(args, rows, 8, 4, {})  # positions 8, 9 (epoch 0) and 10, 11 (epoch 1)
    warm = {}
    Z.step_rows(args, rows, 0, 8, warm)
    assert Z.step_rows(args, rows, 8, 4, warm) == fresh
    epoch0 = Z.step_rows(args, rows, 0, 10, {})
    assert sorted(r["question"] for r, _ in epoch0) == sorted(r["question"] for r in rows)
    assert {b for _, b in fresh} == {None}  # no L1 reward: no budget
    l1 = Z.step_rows(Z.Args(length_reward="l1_max", l1_budget="5-7"), rows, 0, 10, {})
    assert {b for _, b in l1} <= {5, 6, 7} and [r for r, _ in l1] == [r for r, _ in epoch0]


def test_micro_spans_trim_each_micro_batch_to_its_longest_response():
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 0, 0], [1, 0, 0]])
    assert list(micro_spans(0, 5, 2, mask)) == [(0, 2, 3), (2, 4, 2), (4, 5, 1)]
    assert list(micro_spans(1, 5, 0, mask)) == [(1, 5, 2)]  # 0: the whole range at once


def test_bad_length_reward_flags_fail_before_anything_loads():
    with pytest.raises(ValueError, match="--overlong_buffer 4096 must be <= --max_new_tokens 16"):
        Z.derived(Z.Args(length_reward="dapo_overlong"), 1)
    with pytest.raises(ValueError, match="--length_reward_coef"):
        Z.derived(Z.Args(length_reward="cosine", length_reward_coef=0.5), 1)
    assert Z.derived(Z.Args(), 1)["completions_per_update_per_rank"] == 32  # 4 prompts x 8


def test_response_logprobs_match_common_token_logprobs():
    """Shared-prompt log-probs (left-padded prompts, KV cache indexed out to each group) equal the
    plain full-sequence log-probs of every prompt + response, gradients included."""
    path = make_tiny_lm()
    model, tok = load_model(path), load_tokenizer(path)
    prompts = [[5, 6, 7, 8, 9], [10, 11, 12]]  # two prompts of different lengths
    responses = [
        [20, 21, 22, 23],
        [24, 25],
        [26, 27, 28],
        [29],
    ]  # rows 0-1 -> prompt 0, rows 2-3 -> prompt 1
    index = torch.tensor([0, 0, 1, 1])
    enc = tok.pad({"input_ids": prompts}, padding=True, return_tensors="pt")
    resp = torch.tensor([r + [0] * (4 - len(r)) for r in responses])
    resp_mask = torch.tensor([[1] * len(r) + [0] * (4 - len(r)) for r in responses])
    logps, entropy = response_logprobs(
        model, enc["input_ids"], enc["attention_mask"], resp, resp_mask, index, return_entropy=True
    )
    assert logps.shape == (4, 4)
    (logps * resp_mask).sum().backward()
    shared_grad = model.model.embed_tokens.weight.grad.clone()
    model.zero_grad()
    total = 0.0
    for i, r in enumerate(responses):
        p = prompts[int(index[i])]
        ids = torch.tensor([p + r])
        full, full_ent = token_logprobs(
            model, ids, torch.ones_like(ids), return_entropy=True
        )  # (1, L-1)
        assert torch.allclose(logps[i, : len(r)], full[0, len(p) - 1 :], atol=1e-5)
        assert torch.allclose(entropy[i, : len(r)], full_ent[0, len(p) - 1 :], atol=1e-4)
        total = total + full[0, len(p) - 1 :].sum()
    total.backward()
    assert torch.allclose(shared_grad, model.model.embed_tokens.weight.grad, atol=1e-5)


def test_response_logprobs_under_gradient_checkpointing_fall_back_to_concatenation():
    """Checkpointed layers cannot fill a KV cache: the concatenated path runs, with the same values
    and gradients."""
    path = make_tiny_lm()
    tok = load_tokenizer(path)
    enc = tok.pad({"input_ids": [[5, 6, 7, 8, 9], [10, 11, 12]]}, padding=True, return_tensors="pt")
    resp, resp_mask = (
        torch.tensor([[20, 21, 22], [24, 25, 0], [26, 0, 0]]),
        torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]]),
    )
    index = torch.tensor([0, 1, 1])
    out = []
    for ckpt in (False, True):
        model = shard_model(load_model(path), Dist(), gradient_checkpointing=ckpt).train()
        logps, ent = response_logprobs(
            model, enc["input_ids"], enc["attention_mask"], resp, resp_mask, index, True
        )
        ((logps + ent) * resp_mask).sum().backward()
        out.append((logps.detach(), ent.detach(), model.model.embed_tokens.weight.grad))
    assert gradient_checkpointing_on(model)
    (lp0, ent0, grad0), (lp1, ent1, grad1) = out
    assert torch.allclose(lp0 * resp_mask, lp1 * resp_mask, atol=1e-5)
    assert torch.allclose(ent0 * resp_mask, ent1 * resp_mask, atol=1e-4)
    assert torch.allclose(grad0, grad1, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# prompts, data, rewards


def test_prompt_templates():
    chat = Z.make_prompt("What is 2+3?", "qwen-boxed")
    assert chat[0] == {"role": "system", "content": "You are a helpful assistant."}
    assert (
        chat[1]["content"]
        == "What is 2+3?\nPlease reason step by step, and put your final answer within \\boxed{}."
    )
    assert (
        Z.make_prompt("What is 2+3?", "abel")
        == "Question:\nWhat is 2+3?\nAnswer:\nLet's think step by step.\n"
    )
    assert Z.make_prompt("Q?", "abel", budget=512, l1_kind="l1_max").startswith(
        "Question:\nQ? Think for maximum 512 tokens."
    )
    with pytest.raises(ValueError, match="--prompt_template"):
        Z.make_prompt("Q", "alpaca")


COUNTDOWN_Q = "Using the numbers [3, 4, 8], create an equation that equals 20."
COUNTDOWN_RULES = (
    " You can use basic arithmetic operations (+, -, *, /) and each number can"
    " only be used once. Show your work in <think> </think> tags. And return the"
    " final answer in <answer> </answer> tags, for example <answer> (1 + 2) / 3"
    " </answer>."
)


def test_countdown_prompts_are_tinyzeros():
    """TinyZero examples/data_preprocess/countdown.py make_prefix: qwen-instruct and base."""
    instruct = (
        "<|im_start|>system\nYou are a helpful assistant. You first thinks about the "
        "reasoning process in the mind and then provides the user with the answer."
        "<|im_end|>\n"
        "<|im_start|>user\n " + COUNTDOWN_Q + COUNTDOWN_RULES + "<|im_end|>\n"
        "<|im_start|>assistant\nLet me solve this step by step.\n<think>"
    )
    assert Z.make_prompt(COUNTDOWN_Q, "countdown") == instruct
    base = (
        "A conversation between User and Assistant. The user asks a question, and the "
        "Assistant solves it. The assistant first thinks about the reasoning process in the "
        "mind and then provides the user with the answer.\nUser: "
        + COUNTDOWN_Q
        + COUNTDOWN_RULES
        + "\nAssistant: Let me solve this step by step.\n<think>"
    )
    assert Z.make_prompt(COUNTDOWN_Q, "countdown-base") == base


def test_countdown_rows_with_only_target_and_nums(tmp_path):
    path = tmp_path / "countdown.jsonl"  # the fields of TinyZero's Countdown-Tasks-3to4
    rows = [{"target": 20 + i, "nums": [3, 4, 8 + i]} for i in range(4)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    train, evals = load_task_rows(Z.Args(task="countdown", data=str(path), num_eval_prompts=1))
    assert train[0]["question"] == COUNTDOWN_Q and evals[0]["target"] == 23
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"target": 1}) + "\n" + json.dumps({"target": 2}))
    with pytest.raises(ValueError, match="nums"):
        load_task_rows(Z.Args(task="countdown", data=str(bad), num_eval_prompts=1))


def test_toy_held_out_prompts_never_in_training():
    for task in ("math", "countdown"):
        train, held_out = make_toy_rows(task, seed=1)
        assert len(held_out) == TOY_HELD_OUT and not {r["question"] for r in train} & {
            r["question"] for r in held_out
        }
    train, _ = make_toy_rows("math", seed=1)
    assert train[0]["answer"] == "".join(sorted(train[0]["answer"]))
    assert Z.score(f"\\boxed{{{train[0]['answer']}}}", train[0], Z.Args())[:2] == (1.0, True)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "no answer at all",
        "9" * 5000,
        "\\boxed{",
        "\\boxed{}}}{{",
        "ünïcödé 🙂 ∑∫ \x00",
        "<answer></answer>",
        "\\boxed{1/0}",
        "1e999999",
        "\\boxed{" * 300,
    ],
)
def test_garbage_completions_get_zero_reward(text):
    row = {"question": "Sort the digits 4 3 2 1 from smallest to largest.", "answer": "1234"}
    assert Z.score(text, row, Z.Args())[:2] == (0.0, False)
    countdown = {"question": "q", "target": 48, "nums": [3, 4, 8, 2], "answer": "3 * 4 * (8 / 2)"}
    reward, correct, _ = Z.score(text, countdown, Z.Args(task="countdown"))
    assert not correct and reward == (
        0.1 if text == "<answer></answer>" else 0.0
    )  # TinyZero: a tagged answer earns 0.1


def test_reward_modes():
    row = {"answer": "7"}
    assert Z.score("so we get 7 apples", row, Z.Args())[0] == 1.0  # Qwen2.5-Math: last number
    assert Z.score("so we get 7 apples", row, Z.Args(reward_mode="independent"))[0] == 0.5
    assert Z.score("\\boxed{8}", row, Z.Args(reward_mode="independent"))[0] == -0.5
    assert Z.score("nothing", row, Z.Args(reward_mode="independent"))[0] == -1.0
    assert Z.score(
        "<answer> 3 * 4 * (8 / 2) </answer>",
        {"target": 48, "nums": [3, 4, 8, 2]},
        Z.Args(task="countdown"),
    )[:2] == (1.0, True)


def test_levels_and_field_names_from_a_local_file(tmp_path):
    path = tmp_path / "math.jsonl"
    rows = [
        {"problem": f"q{i}", "solution": str(i), "level": f"Level {1 + i % 5}"} for i in range(20)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    args = Z.Args(
        data=str(path),
        question_field="problem",
        answer_field="solution",
        levels="3-5",
        num_eval_prompts=2,
    )
    train, evals = load_task_rows(args)
    assert len(train) + len(evals) == 12 and all(
        r["level"] in ("Level 3", "Level 4", "Level 5") for r in train + evals
    )
    assert train[0]["question"] == "q2" and train[0]["answer"] == "2"
    assert Z.parse_range("2", "--levels") == (2, 2) and Z.parse_range("3-5", "--levels") == (3, 5)
    for bad in ("hard", "3-", "-1", ""):
        with pytest.raises(ValueError, match="--levels"):
            Z.parse_range(bad, "--levels")
    with pytest.raises(ValueError, match="'difficulty'.*--level_field"):
        load_task_rows(
            Z.Args(
                data=str(path),
                question_field="problem",
                answer_field="solution",
                levels="3",
                level_field="difficulty",
            )
        )
    with pytest.raises(
        ValueError, match=r"math\.jsonl:1: missing field 'answer' .*'solution'"
    ):  # no box
        load_task_rows(Z.Args(data=str(path)))


# --------------------------------------------------------------------------------------------------
# reasoning behaviours: keyword stand-in and the LLM judge (tiny model: garbage JSON is counted)


def test_keyword_behaviours():
    text = "First, list all cases. Let me check 2+2=4. Wait, that was a mistake."
    assert E.keyword_behaviours(text) == {
        "subgoal setting",
        "enumeration",
        "verification",
        "backtracking",
    }
    assert E.keyword_behaviours("\\boxed{1234}") == set()


def test_parse_judge_reply():
    assert E.parse_judge_reply("[]") == set()
    reply = 'Sure: [{"behavior": "Verification", "example": "c"}, {"behavior": "Subgoal Setting"}]'
    assert E.parse_judge_reply(reply + " done") == {"verification", "subgoal setting"}
    assert E.parse_judge_reply('[{"behavior": "Flying"}]') == set()
    for bad in (
        "garbage",
        "[1, 2]",
        '{"behavior": "Verification"}',
        "[{",
        "][",
        "[" * 5000 + "]" * 5000,
        "",
    ):
        assert E.parse_judge_reply(bad) is None


def test_judge_through_the_sampler_with_the_tiny_model():
    path = make_tiny_lm()
    judge = HFSampler(load_model(path), load_tokenizer(path))
    labels = E.judge_behaviours(
        judge, ["Sort 2 1", "Sort 4 3"], ["\\boxed{12}", "wait, check: 34"], max_new_tokens=8
    )
    assert labels == [None, None]  # an untrained model's replies are garbage: None, not an error


# --------------------------------------------------------------------------------------------------
# end to end (subprocesses, the way the scripts are run)

# the mechanics tests (resume, torchrun) need no competent base: a 50-step warm start builds faster
SMALL = ["--num_eval_prompts", "16", "--eval_samples", "2", "--warm_start_steps", "50"]
SMALL += ["--prompts_per_step", "4", "--mini_batch_prompts", "2"]
# a 2-layer, 64-wide model gains nothing from 2 threads and loses a lot on a busy machine
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def read_metrics(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def test_learning_toy_accuracy_rises(run_cmd, tmp_path):
    out = tmp_path / "learn"
    run_cmd(
        [
            sys.executable,
            "zero_rl.py",
            "--output_dir",
            str(out),
            "--total_steps",
            "20",
            "--eval_every",
            "20",
            "--num_eval_prompts",
            "64",
            "--save_every",
            "100",
        ],
        timeout=600,
        env=ONE_THREAD,
    )
    summary = json.loads((out / "summary.json").read_text())
    claims = {c["metric"]: c for c in summary["claims"]}
    assert set(claims) == {"eval/accuracy_greedy", "eval/accuracy_sampled"}
    for metric, c in claims.items():  # computed from the run's own before/after evaluations
        assert (c["baseline"], c["result"]) == (summary["before"][metric], summary["after"][metric])
        assert c["holds"], c
    before, after = (
        summary["before"]["eval/accuracy_sampled"],
        summary["after"]["eval/accuracy_sampled"],
    )
    assert after - before >= 0.15, (before, after)
    assert (out / "curves.png").stat().st_size > 0 and (out / "model" / "config.json").exists()
    train = [r for r in read_metrics(out) if "reward" in r]
    assert [r["step"] for r in train] == list(range(1, 21))
    for key in (
        "completions/mean_length",
        "completions/clipped_ratio",
        "completions/mean_terminated_length",
        "entropy",
        "kl",
        "clip_ratio/region_mean",
        "frac_reward_zero_std",
        "time/step",
        "tokens_per_s",
    ):
        assert math.isfinite(train[-1][key]), key


def test_resume_continues_from_the_checkpoint(run_cmd, tmp_path):
    """Run to step 2 (checkpoint), resume to 4; steps 3-4 match an uninterrupted 4-step run exactly.
    Also exercises the LLM-judge eval path, a length reward with a warm-up that spans the resume,
    the repetition penalty, the format-penalty reward and grpo loss."""
    judge = make_tiny_lm()
    flags = SMALL + [
        "--save_every",
        "2",
        "--eval_every",
        "100",
        "--judge_model",
        judge,
        "--judge_max_new_tokens",
        "8",
        "--length_reward",
        "kimi",
        "--length_reward_warmup_steps",
        "3",
        "--repetition_penalty",
        "-0.05",
        "--repetition_ngram_size",
        "2",
        "--reward_mode",
        "independent",
        "--loss_type",
        "grpo",
    ]
    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    run_cmd(
        [sys.executable, "zero_rl.py", "--output_dir", str(resumed), "--total_steps", "2", *flags],
        env=ONE_THREAD,
    )
    proc = run_cmd(
        [
            sys.executable,
            "zero_rl.py",
            "--output_dir",
            str(resumed),
            "--total_steps",
            "4",
            "--resume",
            *flags,
        ],
        env=ONE_THREAD,
    )
    assert "resumed from" in proc.stdout and "at step 2" in proc.stdout
    run_cmd(
        [sys.executable, "zero_rl.py", "--output_dir", str(straight), "--total_steps", "4", *flags],
        env=ONE_THREAD,
    )
    a, b = read_metrics(resumed), read_metrics(straight)
    assert [r["step"] for r in a if "reward" in r] == [1, 2, 3, 4]
    assert json.loads((resumed / "checkpoint" / "meta.json").read_text())["step"] == 4
    for key in ("reward", "completions/mean_length", "loss"):
        assert [r[key] for r in a if "reward" in r] == pytest.approx(
            [r[key] for r in b if "reward" in r], abs=1e-5
        ), key
    final = [r for r in a if "eval/judge_parse_failures" in r][-1]
    # the untrained judge never replies with a JSON list: all 16 replies fail and label nothing
    assert final["eval/judge_parse_failures"] == 16
    assert [final[f"eval/behaviour_judge/{b}"] for b in E.BEHAVIOURS] == [0.0] * 4


def test_torchrun_two_processes(run_cmd, torchrun_cmd, tmp_path):
    out = tmp_path / "ddp"
    run_cmd(
        [
            *torchrun_cmd,
            "zero_rl.py",
            "--output_dir",
            str(out),
            "--total_steps",
            "2",
            "--eval_every",
            "2",
            "--micro_batch_size",
            "4",
            "--loss_type",
            "verl",
            *SMALL,
        ],
        timeout=600,
    )
    records = read_metrics(out)
    assert [r["step"] for r in records if "reward" in r] == [1, 2]
    summary = json.loads((out / "summary.json").read_text())  # rank 0 writes the gathered eval
    metrics = [c["metric"] for c in summary["claims"]]
    assert metrics == ["eval/accuracy_greedy", "eval/accuracy_sampled"]
    assert summary["claims"][1]["result"] == summary["after"]["eval/accuracy_sampled"]
    assert [r for r in records if "eval/accuracy_greedy" in r][-1]["step"] == 2
