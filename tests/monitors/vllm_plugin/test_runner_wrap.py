"""The plugin's wrapping of vLLM's model runner class: what the tap sees of each engine step.

The class here stands in for vLLM's V1 ``GPUModelRunner`` (the real one is exercised by the integration
test, ``-m vllm``).
"""

from monitors.vllm_plugin.plugin import wrap_runner
from monitors.vllm_plugin.settings import PluginSettings


class Tap:
    """Records what the wrapped runner tells it, in order."""

    def __init__(self, events: list[str]) -> None:
        self.events = events

    def step_started(self) -> None:
        self.events.append("step started")

    def capture(self) -> str:
        self.events.append("capture")
        return "rows"

    def publish(self, rows: str, output: str) -> None:
        self.events.append(f"publish {rows} {output}")


def _runner_class(events: list[str]) -> type:
    class Runner:
        def _setup_eagle3_aux_hidden_state_outputs(self) -> None:
            events.append("aux outputs")

        def execute_model(self, scheduler_output: str) -> None:
            events.append(f"forward {scheduler_output}")

        def sample_tokens(self, grammar_output: str) -> str:
            events.append("sample")
            return "output"

    return Runner


def test_the_tap_hears_of_each_step_before_its_forward_pass_and_wraps_sampling():
    events: list[str] = []
    runner_class = _runner_class(events)
    wrap_runner(runner_class, PluginSettings.from_env({}))
    wrap_runner(runner_class, PluginSettings.from_env({}))  # a second registration changes nothing
    runner = runner_class()
    runner._sinkwatch_tap = Tap(events)
    runner.execute_model("step 1")
    assert runner.sample_tokens(None) == "output"
    runner.execute_model("step 2")
    assert events == [
        *["step started", "forward step 1", "capture", "sample", "publish rows output"],
        *["step started", "forward step 2"],
    ]


def test_an_unmonitored_runner_runs_as_before():
    events: list[str] = []
    runner_class = _runner_class(events)
    wrap_runner(runner_class, PluginSettings.from_env({}))
    runner = runner_class()
    runner._sinkwatch_tap = None  # what attach_tap leaves when the engine cannot be monitored
    runner.execute_model("step 1")
    assert runner.sample_tokens(None) == "output"
    assert events == ["forward step 1", "sample"]
