"""Rescue strategies: each changes the request in a way orthogonal to the failure, and only that way."""

from dataclasses import replace

from gateway.gate.rescue import CONSTRAINT, NGRAM_BIAS, STRATEGIES, TOP_P_CEILING, looping_tokens, neutralise
from tests.gate.scripted import REQUEST

LOOP = [1, 2, 3, 4] + [7, 8, 9] * 5


def test_looping_tokens_are_those_that_keep_closing_repeated_ngrams():
    bias = looping_tokens(LOOP)
    assert set(bias) == {7, 8, 9}
    assert set(bias.values()) == {NGRAM_BIAS}
    assert looping_tokens(list(range(30))) == {}


def test_reseed_raises_the_temperature_and_changes_the_seed_with_each_attempt():
    first, second = (STRATEGIES["reseed"](REQUEST, LOOP, k).sampling for k in (1, 2))
    assert 0 < first.temperature < second.temperature
    assert len({REQUEST.sampling.seed, first.seed, second.seed}) == 3
    assert first.repetition_penalty == REQUEST.sampling.repetition_penalty and not first.logit_bias


def test_a_resample_draws_within_the_nucleus_and_keeps_a_narrower_one():
    assert REQUEST.sampling.top_p == 1.0
    assert STRATEGIES["reseed"](REQUEST, LOOP, 1).sampling.top_p == TOP_P_CEILING < 1
    narrow = replace(REQUEST, sampling=replace(REQUEST.sampling, top_p=0.5))
    assert STRATEGIES["combined"](narrow, LOOP, 2).sampling.top_p == 0.5


def test_an_unseeded_request_stays_unseeded():
    unseeded = replace(REQUEST, sampling=replace(REQUEST.sampling, seed=None))
    assert STRATEGIES["combined"](unseeded, LOOP, 1).sampling.seed is None


def test_penalize_overrides_a_penalty_that_invites_loops():
    looping = replace(REQUEST, sampling=replace(REQUEST.sampling, repetition_penalty=0.8))
    sampling = STRATEGIES["penalize"](looping, LOOP, 1).sampling
    assert sampling.repetition_penalty > 1 and sampling.presence_penalty > 0


def test_combined_biases_against_the_loop_and_keeps_the_client_bias():
    biased = replace(REQUEST, sampling=replace(REQUEST.sampling, logit_bias={42: 5.0}))
    sampling = STRATEGIES["combined"](biased, LOOP, 1).sampling
    assert sampling.logit_bias == {42: 5.0, 7: NGRAM_BIAS, 8: NGRAM_BIAS, 9: NGRAM_BIAS}
    assert sampling.repetition_penalty > 1 and sampling.temperature > 0


def test_constrain_changes_the_instructions_and_nothing_else():
    rescued = STRATEGIES["constrain"](REQUEST, LOOP, 1)
    assert rescued.sampling == REQUEST.sampling
    assert rescued.prompt.messages[0] == {"role": "system", "content": CONSTRAINT}
    assert rescued.prompt.messages[1:] == REQUEST.prompt.messages


def test_constrain_extends_an_existing_system_message():
    messages = ({"role": "system", "content": "Be kind."}, {"role": "user", "content": "hi"})
    request = replace(REQUEST, prompt=replace(REQUEST.prompt, messages=messages))
    system = STRATEGIES["constrain"](request, LOOP, 1).prompt.messages[0]
    assert system["content"] == f"Be kind.\n{CONSTRAINT}"


def test_neutralise_takes_out_every_client_setting_that_pushes_toward_repetition():
    sampling = replace(
        REQUEST.sampling,
        frequency_penalty=-1.0,
        presence_penalty=-0.5,
        repetition_penalty=0.8,
        logit_bias={7: 6.0, 42: 3.0, 8: -2.0},
    )
    neutral, names = neutralise(sampling, LOOP)
    assert names == ("frequency_penalty", "presence_penalty", "repetition_penalty", "logit_bias")
    assert (neutral.frequency_penalty, neutral.presence_penalty, neutral.repetition_penalty) == (0.0, 0.0, 1.0)
    # the positive bias on a looping token goes; one on a token outside the loop and a negative one stay
    assert neutral.logit_bias == {42: 3.0, 8: -2.0}
    assert (neutral.temperature, neutral.seed, neutral.top_p) == (sampling.temperature, sampling.seed, sampling.top_p)


def test_neutralise_leaves_ordinary_sampling_alone():
    sampling = replace(REQUEST.sampling, frequency_penalty=0.5, presence_penalty=0.3, repetition_penalty=1.1)
    assert neutralise(sampling, LOOP) == (sampling, ())
