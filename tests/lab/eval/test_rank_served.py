"""The served rank stressors: the request per item and level (chat or plain text), and the per-level count
of what the gateway reported."""

from lab.eval.rank_served import Level, levels_of, open_questions, request_body, summarise
from lab.eval.rank_tasks import scored_items, stacked_constraints


def _answer(text: str, verdict: str, signals: list[str], margins: dict[str, float], monitored: int) -> dict:
    reasons = [{"signal": s, "value": -1.0, "threshold": 0.0, "direction": "low", "since_token": 40} for s in signals]
    bands = {band: {"layers": [1], "rank_margin_min": m} for band, m in margins.items()}
    stability = {"verdict": verdict, "reasons": reasons, "bands": bands, "tokens_monitored": monitored}
    return {"text": text, "tokens": monitored, "stability": stability}


def test_constraint_levels_are_greedy_and_temperature_levels_carry_no_rules():
    levels = levels_of([0, 30], [1.8])
    assert [level.name for level in levels] == ["constraints=0", "constraints=30", "temperature=1.8"]
    question = scored_items(1)[0].question
    chat = request_body("m", True, question, levels[1], 96, seed=3)
    assert chat["temperature"] == 0.0 and chat["messages"][-1] == {"role": "user", "content": question}
    assert chat["messages"][0]["content"].splitlines() == stacked_constraints()[:30]
    hot = request_body("m", True, question, levels[2], 96, seed=3)
    assert hot["temperature"] == 1.8 and hot["messages"][0]["content"] == "You are a helpful assistant."
    plain = request_body("m", False, question, levels[1], 96, seed=3)
    assert plain["prompt"].endswith(f"\n\nQuestion: {question}\nAnswer:") and "messages" not in plain
    assert len(set(open_questions(30))) == 30


def test_a_rank_signal_counts_whatever_the_verdict_and_short_answers_are_not_judged():
    items = scored_items(1)  # a sum (7 + 5), a fact (Paris), an instruction (YES)
    answers = [
        _answer("12", "rank_exhaustion", ["early.rank_margin"], {"early": -1.0, "late": 2.0}, 96),
        _answer("Paris Paris Paris", "sink", ["text.periodicity", "middle.rank_margin"], {"early": 1.0}, 96),
        _answer("no", "ok", [], {}, 5),
    ]
    summary = summarise(Level("constraints", 30, 0.0), answers, items)
    assert summary["verdicts"] == {"ok": 1, "rank_exhaustion": 1, "sink": 1}
    assert summary["rank_fired"] == summary["rank_fired_of_judged"] == 2 and summary["judged"] == 2
    assert summary["rank_margin_min_median"] == {"early": 0.0, "late": 2.0}
    assert summary["accuracy"] == 2 / 3 and summary["rank_fired_ci95"][0] < 2 / 3 < summary["rank_fired_ci95"][1]


def test_open_questions_have_no_accuracy():
    answers = [_answer("A long answer.", "ok", [], {"late": 1.0}, 96), _answer("Short.", "ok", [], {}, 4)]
    summary = summarise(Level("temperature", 0, 1.0), answers)
    assert "accuracy" not in summary and summary["judged"] == 1 and summary["rank_fired"] == 0
