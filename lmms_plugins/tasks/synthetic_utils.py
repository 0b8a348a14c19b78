"""lmms-eval hooks for the synthetic VQA tasks written by `visor_model.reference.tasks.write_task`.

lmms-eval imports this (through each task folder's utils.py) while indexing task YAMLs, so it stays
import-light: no torch, no lmms_eval.
"""

import string

_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalise_answer(text: str) -> str:
    """Lowercase, drop punctuation, collapse whitespace: "  Red. " -> "red"."""
    return " ".join(text.lower().translate(_PUNCTUATION).split())


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions) by dynamic programming over one row."""
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def anls(prediction: str, answer: str, threshold: float = 0.5) -> float:
    """Average Normalised Levenshtein Similarity for one answer: 1 - distance / longer length,
    or 0 when that normalised distance reaches the threshold. Both strings are normalised first."""
    prediction, answer = normalise_answer(prediction), normalise_answer(answer)
    longest = max(len(prediction), len(answer))
    if longest == 0:
        return 1.0
    distance = levenshtein(prediction, answer) / longest
    return 1.0 - distance if distance < threshold else 0.0


def doc_to_visual(doc: dict) -> list:
    return [doc["image"].convert("RGB")]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """Just the question: the model plugin inserts the <image> placeholder itself."""
    return doc["question"]


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    prediction = results[0] if results else ""
    return {
        "exact_match": float(normalise_answer(prediction) == normalise_answer(doc["answer"])),
        "anls": anls(prediction, doc["answer"]),
    }
