"""What travels between the plugin and the gateway."""

from dataclasses import replace

import pytest

from monitors.bands import LayerBand
from monitors.features import StepFeatures
from monitors.vllm_plugin.wire import RequestTag, choice_request_id, decode_batch, encode_batch, monitor_profile


def test_a_tag_travels_in_vllm_xargs_and_comes_back_from_extra_args():
    tag = RequestTag("chatcmpl-1", "tcp://10.0.0.5:5599")
    assert RequestTag.from_extra_args(tag.to_xargs()) == tag


def test_with_several_choices_each_child_request_publishes_under_its_own_id():
    tag = RequestTag("chatcmpl-1", "tcp://10.0.0.5:5599", choices=3)
    assert RequestTag.from_extra_args(tag.to_xargs()) == tag
    assert tag.for_engine_request("2_chatcmpl-1-ab12").request_id == choice_request_id("chatcmpl-1", 2)
    assert tag.for_engine_request("chatcmpl-1-ab12") == tag  # not a child: the parent's id


def test_with_one_choice_the_engine_id_is_not_read():
    tag = RequestTag("chatcmpl-1", "tcp://10.0.0.5:5599")
    assert "sinkwatch_choices" not in tag.to_xargs()
    assert tag.for_engine_request("0_chatcmpl-1") == tag


@pytest.mark.parametrize(
    "extra_args",
    [None, {}, {"sinkwatch_request_id": "r"}, {"sinkwatch_request_id": "", "sinkwatch_sink": "tcp://h:1"}, {"x": 1}],
)
def test_requests_without_a_complete_tag_are_not_monitored(extra_args):
    assert RequestTag.from_extra_args(extra_args) is None


def test_a_batch_round_trips_features_exactly():
    features = StepFeatures(index=3, token_id=17, window=4, values={"entropy": 1.25, "late.pr": 3.5})
    profile, steps = decode_batch(encode_batch("p", [("r1", features), ("r2", features)]))
    assert profile == "p"
    assert steps == [("r1", features), ("r2", features)]


@pytest.mark.parametrize("message", [b"not json", b"{}", b'{"profile": "p", "steps": [["r"]]}', b"[1]"])
def test_malformed_messages_are_refused(message):
    with pytest.raises(ValueError):
        decode_batch(message)


def test_the_profile_changes_with_the_extractor_reference_bands_and_window_not_with_thresholds(calibration):
    bands = calibration.bands
    profile = monitor_profile(calibration, bands)
    assert monitor_profile(calibration, (LayerBand("late", (20,)),)) != profile
    assert monitor_profile(replace(calibration, window=16), bands) != profile
    assert monitor_profile(replace(calibration, outlier_dims={4: [1]}), bands) != profile
    assert monitor_profile(replace(calibration, recurrence_levels={4: 0.5}), bands) != profile
    assert monitor_profile(replace(calibration, mean_states={}), bands) != profile
    refitted = replace(calibration, created="2000-01-01", signals=calibration.signals[:1], rank_floors={})
    assert monitor_profile(refitted, bands) == profile  # thresholds refitted on traffic: the same features
