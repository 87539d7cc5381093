"""The completions traffic for a base model: the prompt sets' user texts as ``Q: ... A:`` prompts, sampled and
greedy, the induce prompts under each penalty spread through the stream, held-out batches by offset."""

from lab.eval.completion_traffic import INDUCER_PENALTIES, completion_requests
from lab.eval.prompts import load_prompts


def test_ordinary_prompts_alternate_sampled_and_greedy_and_loops_are_spread_through():
    requests = completion_requests("m", None, per_set=4, max_tokens=50, induced=2)
    ordinary = [r for r in requests if r.traffic == "ordinary"]
    induced = [i for i, r in enumerate(requests) if r.traffic == "induced"]
    assert len(ordinary) == 12 and len(induced) == 2 * len(INDUCER_PENALTIES)
    normal = [r for r in ordinary if r.key.startswith("normal-")]
    assert [r.body["temperature"] for r in normal] == [0.8, 0.0, 0.8, 0.0]
    assert induced[0] > 0 and induced[-1] - induced[0] >= len(requests) // 2  # not bunched at one end
    first = load_prompts("normal")[0]
    assert ordinary[0].body["prompt"] == f"Q: {first.messages[-1]['content']}\nA:"
    assert all(
        r.body["frequency_penalty"] < 0 and r.body["temperature"] == 0.0 for r in requests if r.traffic == "induced"
    )


def test_a_held_out_batch_shares_no_prompt_with_the_recorded_one():
    recorded = completion_requests("m", None, per_set=6, max_tokens=50, induced=2)
    held_out = completion_requests("m", None, per_set=6, max_tokens=50, induced=2, offset=(6, 2))
    assert held_out and not {r.body["prompt"] for r in recorded} & {r.body["prompt"] for r in held_out}


def test_the_sets_take_turns_so_any_time_split_holds_every_kind_of_traffic():
    requests = completion_requests("m", None, per_set=30, max_tokens=50, induced=0)
    sets = [r.key.split("-")[0] for r in requests]
    latest = sets[int(len(sets) * 0.7) :]
    assert {"normal", "prod", "enum"} <= set(sets[:9])
    assert {"normal", "prod"} <= set(latest)


def test_extra_samples_of_a_prompt_are_sent_together_with_their_own_seeds():
    requests = completion_requests("m", None, per_set=3, max_tokens=50, induced=0, samples=3)
    first = requests[:3]
    assert len({r.body["prompt"] for r in first}) == 1 and len({r.key for r in requests}) == len(requests)
    assert [r.body["temperature"] for r in first] == [0.8, 0.8, 0.8]
    assert len({r.body["seed"] for r in first}) == 3
    greedy_prompt = next(r for r in requests if r.key.endswith(":greedy"))
    followers = [r for r in requests if r.body["prompt"] == greedy_prompt.body["prompt"]]
    assert [r.body["temperature"] for r in followers] == [0.0, 0.8, 0.8]
