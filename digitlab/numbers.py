"""Read a whole handwritten number: its digits left to right, each with its box, probabilities and verdict.

    reading = read_number(gray, predictor)      # gray: (H, W) floats in [0, 1] or 0..255, either polarity
    reading.text, reading.confidence            # "1207", 0.93: the product of the digits' confidences
    [(d.digit, d.confidence, d.box) for d in reading.digits]     # boxes in the picture's pixels
    reading.unsure_positions                    # [2]: the third digit is a guess
    reading.to_json()                           # for --json and the API
    read_number(gray, predictor, mode="number") # always look for several digits (touching ones too)
    read_number(gray, predictor, judge=trust_judge(predictor))   # verdicts by the trust model, as `predict`'s

The digits are found by `digitlab.segmentation` (components, pieces put together, touching digits
cut, LeCun's segmentation-recognition search) and each goes through `preprocessing.to_mnist`
unchanged. `mode`: "auto" (the default) reads a lone digit exactly as `digitlab predict` does and
several groups of ink as a number; "number" always searches for several digits; "digit" never. In auto
mode a number that `judge` finds half made of non-digits (or, cut from one piece of ink, with any) is
read as one digit instead, as "digit" would read it: a dash or a frame is not a number.

Every digit gets a verdict. Here it is "digit", or "unsure" when its top probability is below
`unsure_below`; `judge` replaces that rule, for instance with the trust model's (issue 11:
"not_a_digit" from its out-of-distribution test, calibrated thresholds). Any digit whose verdict is
not "digit" is named in `unsure_positions`. Decimal points and minus signs are not read: small
marks standing apart are left out of the text and listed in `marks` (docs/numbers.md).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from digitlab.predictor import Predictor
from digitlab.segmentation import MAX_DIGITS, MODES, Box, TooManyDigitsError, segment

__all__ = ["MAX_DIGITS", "MODES", "UNSURE_BELOW", "Box", "DigitReading", "Judge", "NumberReading",
           "TooManyDigitsError", "read_number", "trust_judge"]

UNSURE_BELOW = 0.7  # a digit whose top probability is below this is "unsure"

# (n, 28, 28) inputs and their (n, classes) probabilities -> one verdict per digit: "digit", "unsure",
# "not_a_digit" or "blank" (digitlab.trust's kinds).
Judge = Callable[[np.ndarray, np.ndarray], list[str]]


@dataclass
class DigitReading:
    box: Box  # where the digit is, in the input picture's pixels
    probabilities: np.ndarray  # (classes,) float32, what the model gave it
    digit: int  # the most probable class
    confidence: float  # its probability
    verdict: str  # "digit", "unsure", ...: see the module docstring
    input28: np.ndarray = field(repr=False)  # what the model saw, (28, 28) float32 in [0, 1]

    def to_json(self) -> dict:
        return {"digit": self.digit, "confidence": self.confidence, "verdict": self.verdict,
                "box": self.box.to_json(), "probabilities": [float(p) for p in self.probabilities]}


@dataclass
class NumberReading:
    text: str  # the digits left to right, "1207"
    digits: list[DigitReading]
    confidence: float  # the product of the digits' confidences
    unsure_positions: list[int]  # 0-based positions of the digits whose verdict is not "digit"
    mode: str  # "digit" or "number": how it was read (what "auto" chose)
    marks: list[Box] = field(default_factory=list)  # small marks left out of the text: dots, dashes

    def to_json(self) -> dict:
        return {"text": self.text, "confidence": self.confidence, "unsure_positions": self.unsure_positions,
                "mode": self.mode, "digits": [d.to_json() for d in self.digits],
                "marks": [b.to_json() for b in self.marks]}


def read_number(gray, predictor: Predictor, mode: str = "auto", unsure_below: float = UNSURE_BELOW,
                judge: Judge | None = None) -> NumberReading:
    """Read the digits in a grayscale picture, left to right.

    Raises InputImageError (a NoInkError for a blank picture, TooManyDigitsError past MAX_DIGITS) for
    pictures it can't read, ConfigError for an unknown mode.
    """
    found = segment(gray, predictor, mode)
    images = np.stack([s.input28 for s in found.segments])
    proba = np.stack([s.probabilities for s in found.segments])
    verdicts = judge(images, proba) if judge is not None else threshold_verdicts(proba, unsure_below)
    if mode == "auto" and found.mode == "number" and _not_writing(verdicts, found.groups):
        return read_number(gray, predictor, "digit", unsure_below, judge)
    digits = [DigitReading(s.box, p, int(p.argmax()), float(p.max()), v, s.input28)
              for s, p, v in zip(found.segments, proba, verdicts, strict=True)]
    return NumberReading(text="".join(predictor.class_names[d.digit] for d in digits), digits=digits,
                         confidence=float(np.prod([d.confidence for d in digits])),
                         unsure_positions=[i for i, d in enumerate(digits) if d.verdict != "digit"],
                         mode=found.mode, marks=found.marks)


def _not_writing(verdicts: list[str], groups: int) -> bool:
    """Whether auto's number is likelier no writing at all: half its digits are not digits, or it was cut out of
    one piece of ink and any is (a dash, a frame). Then the picture is read as one digit, as `--mode digit` reads
    it. A real number rarely trips this: of the bench's 1,200 4-digit numbers read by fastcnn, 4 read right went
    back to one digit, all of touching digits (docs/numbers.md)."""
    wrong = verdicts.count("not_a_digit")
    return 2 * wrong >= len(verdicts) or (groups == 1 and wrong > 0)


def trust_judge(predictor: Predictor) -> Judge:
    """The trust model's verdicts (Predictor.judge: calibrated thresholds, out-of-distribution test) as
    read_number's `judge`, so each digit of a number is judged as `digitlab predict` judges a lone digit."""
    def judge(images: np.ndarray, proba: np.ndarray) -> list[str]:
        return [v.kind for v in predictor.judge(images).verdicts]
    return judge


def threshold_verdicts(proba: np.ndarray, unsure_below: float = UNSURE_BELOW) -> list[str]:
    """The verdict without a trust model: "digit" when the top probability reaches `unsure_below`, else "unsure"."""
    return ["digit" if p.max() >= unsure_below else "unsure" for p in proba]
