"""A tiny scored task for the rank-exhaustion stressors: arithmetic, facts and one checkable instruction.

Each item is a question and a check on the answer's text (case-insensitive substring, or its absence for
an instruction that forbids something). Small enough to answer greedily in seconds on a CPU; the point is
whether quality falls where the novel PR's margin does, not a benchmark score.
"""

from dataclasses import dataclass

__all__ = ["ScoredItem", "scored_items", "stacked_constraints"]


@dataclass(frozen=True)
class ScoredItem:
    """A question, the text a correct answer contains, and the task it belongs to."""

    task: str
    question: str
    expected: str

    def correct(self, answer: str) -> bool:
        """Whether ``answer`` contains the expected text (case-insensitive)."""
        return self.expected.lower() in answer.lower()


_ARITHMETIC = [(7, 5), (12, 9), (23, 14), (8, 8), (31, 17), (45, 26), (19, 3), (60, 40), (13, 29), (50, 25)]
_FACTS = [
    ("What is the capital of France?", "Paris"),
    ("What is the capital of Japan?", "Tokyo"),
    ("What is the capital of Italy?", "Rome"),
    ("What planet do we live on?", "Earth"),
    ("What colour is the sky on a clear day?", "blue"),
    ("How many days are there in a week?", "seven"),
    ("What is frozen water called?", "ice"),
    ("Which animal is known as the king of the jungle?", "lion"),
    ("What is the largest ocean on Earth?", "Pacific"),
    ("What gas do plants absorb from the air?", "carbon dioxide"),
]
_INSTRUCTIONS = [
    ("Reply with the single word YES.", "yes"),
    ("Reply with the single word NO.", "no"),
    ("Write the word 'banana' and nothing else.", "banana"),
    ("Repeat this word exactly: orange.", "orange"),
    ("Say hello.", "hello"),
    ("Spell the word cat.", "c"),
    ("Write the number ten in digits.", "10"),
    ("Name one colour of the rainbow: the one that starts with R.", "red"),
    ("Complete the sentence: The sun rises in the ...", "east"),
    ("What is the opposite of hot? Answer in one word.", "cold"),
]


def scored_items(per_task: int = 10) -> list[ScoredItem]:
    """The first ``per_task`` (at most ten) sums, facts and instructions."""
    sums = [ScoredItem("arithmetic", f"What is {a} + {b}? Answer with the number.", str(a + b)) for a, b in _ARITHMETIC]
    facts = [ScoredItem("facts", q, a) for q, a in _FACTS]
    instructions = [ScoredItem("instruction", q, a) for q, a in _INSTRUCTIONS]
    return sums[:per_task] + facts[:per_task] + instructions[:per_task]


# Constraints 13–50, after the exchange-rate experiment's twelve (monitors/data/constraints.json).
_MORE_CONSTRAINTS = [
    "Do not use the letter 'z'.",
    "Never use exclamation marks.",
    "Do not use contractions.",
    "Write in the present tense.",
    "Do not use passive voice.",
    "Avoid the word 'the' where you can.",
    "Do not use semicolons.",
    "Do not use parentheses.",
    "Never apologise.",
    "Do not mention colours.",
    "Do not mention animals.",
    "Do not mention food.",
    "Do not mention time or dates.",
    "Avoid words longer than ten letters.",
    "Do not use quotation marks.",
    "Do not ask the user for clarification.",
    "Do not use the word 'because'.",
    "Do not start a sentence with 'I'.",
    "Keep the answer under fifty words.",
    "Do not use emojis.",
    "Do not use capital letters for emphasis.",
    "Never mention a website or link.",
    "Do not use metaphors.",
    "Avoid technical jargon.",
    "Never mention money.",
    "Do not use the word 'thing'.",
    "Do not use rhetorical questions.",
    "Do not use the word 'just'.",
    "Never use more than one comma in a sentence.",
    "Do not mention the user.",
    "Do not describe your reasoning.",
    "Never repeat a word in the same sentence.",
    "Do not use the words 'always' or 'never' in your answer.",
    "Do not mention countries.",
    "Avoid negative words.",
    "Do not quote anyone.",
    "Do not use abbreviations.",
    "Write as if to a child.",
]


def stacked_constraints() -> list[str]:
    """Fifty system-prompt constraints in the order they are stacked: the exchange-rate twelve, then more."""
    from lab.eval.exchange import constraints

    return constraints() + _MORE_CONSTRAINTS
