"""Log-probabilities leave the gate with their tokens' text, never those of withheld or rolled-back tokens."""

import asyncio
from dataclasses import dataclass, replace

from gateway.gate.policy import Policy
from gateway.generation import GenerationRequest, TokenEvent, TokenLogprob, TokenLogprobs
from tests.gate.scripted import REQUEST, ScriptedBackend, ScriptedMonitor, controller, token_text


@dataclass
class LogprobBackend(ScriptedBackend):
    """The scripted tokens, each with a log-probability entry spelling its own text."""

    def generate(self, request: GenerationRequest):
        return self._with_logprobs(super().generate(request))

    @staticmethod
    async def _with_logprobs(events):
        async for event in events:
            if isinstance(event, TokenEvent):
                entry = TokenLogprob(event.text, -1.0, event.text.encode())
                event = replace(event, logprobs=TokenLogprobs(entry))
            yield event


def _released(gate, backend) -> list[tuple[str, list[str]]]:
    """Each released piece with the tokens of the log-probabilities taken right after it."""

    async def go():
        events = backend.generate(REQUEST)
        await anext(events)
        pieces = []
        async for text in gate.run(events):
            pieces.append((text, [entry.sampled.token for entry in gate.take_released_logprobs()]))
        assert gate.take_released_logprobs() == []
        return pieces

    return asyncio.run(go())


def test_every_released_piece_carries_exactly_its_tokens():
    backend = LogprobBackend([12])
    gate = controller(backend, Policy.BLOCK, [ScriptedMonitor(None)], holdback_tokens=3)
    pieces = _released(gate, backend)
    assert all(text == "".join(tokens) for text, tokens in pieces)
    assert [token for _, tokens in pieces for token in tokens] == [token_text(0, i) for i in range(12)]


def test_blocked_tokens_never_hand_out_their_logprobs():
    backend = LogprobBackend([40])
    gate = controller(backend, Policy.BLOCK, [ScriptedMonitor(fire_at=20, last_stable=15)], holdback_tokens=8)
    pieces = _released(gate, backend)
    assert [token for _, tokens in pieces for token in tokens] == [token_text(0, i) for i in range(16)]
    assert gate.result.withheld_tokens == 5


def test_after_a_rescue_the_logprobs_follow_the_answer_the_client_got():
    backend = LogprobBackend([30, 12])
    gate = controller(backend, Policy.RESCUE, [ScriptedMonitor(20, 9), ScriptedMonitor(None)], holdback_tokens=16)
    pieces = _released(gate, backend)
    expected = [token_text(0, i) for i in range(10)] + [token_text(1, i) for i in range(12)]
    assert [token for _, tokens in pieces for token in tokens] == expected
    assert "".join(text for text, _ in pieces) == "".join(expected)
