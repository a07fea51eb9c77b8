"""How much to draft: the adaptive choice of K and what the draft achieved, per generation.

Kept apart from the decoding loop (speculative.py): a policy over measured acceptance and
speed, with no model in it.
"""

import statistics
from dataclasses import dataclass, field

MAX_DRAFT_TOKENS = 8
START_DRAFT_TOKENS = 3


@dataclass
class DraftStats:
    """What the draft did in one generation."""

    drafted: int = 0  # tokens the draft proposed
    accepted: int = 0  # of those, tokens the target kept
    rounds: int = 0  # verification passes of the target
    plain_tokens: int = 0  # tokens the target decoded alone (adaptive fallback)
    plain_step_s: list[float] = field(default_factory=list, repr=False)

    @property
    def plain_tps(self) -> float | None:
        """The target's own decode speed, measured on its plain steps in this generation
        (the median step, so the first step's tracing does not count)."""
        if not self.plain_step_s:
            return None
        return 1 / statistics.median(self.plain_step_s)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def mean_accepted(self) -> float:
        """Drafted tokens kept per verification pass (each pass adds one more of its own)."""
        return self.accepted / self.rounds if self.rounds else 0.0

    def as_dict(self) -> dict:
        return {"drafted": self.drafted, "accepted": self.accepted, "rounds": self.rounds,
                "plain_tokens": self.plain_tokens, "acceptance_rate": self.acceptance_rate,
                "mean_accepted": self.mean_accepted,
                "plain_tps": self.plain_tps}


class AdaptiveK:
    """How many tokens to draft next, from the running acceptance rate and measured speed.

    K grows while nearly every draft passes and shrinks when most fail. Drafting stops for a
    stretch of plain decode steps when acceptance is near zero, or when rounds have yielded
    fewer tokens per second than plain steps (a draft too slow for its acceptance); then a
    probe with K=1, and every failed probe doubles the stretch. The first few tokens are
    plain, to measure the target's own speed. A draft whose first step takes longer than a
    plain target step can never pay: drafting stops for the longest stretch at once. A fixed
    K skips all of this.
    """

    ALPHA = 0.5  # weight of the latest measurement in the running figures
    GROW, SHRINK, GIVE_UP = 0.8, 0.5, 0.2
    FIRST_PLAIN, FIRST_PAUSE, LONGEST_PAUSE = 3, 16, 256
    SLOW_DRAFT = 1.5

    def __init__(self, fixed: int | None = None, start: int = START_DRAFT_TOKENS,
                 most: int = MAX_DRAFT_TOKENS):
        self.fixed = fixed
        self.k = fixed if fixed is not None else start
        self.most = most
        self.rate = 0.5
        self.round_tps = None  # tokens per second of verification rounds
        self.plain_tps = None  # and of plain decode steps
        self.pause = 0 if fixed is not None else self.FIRST_PLAIN  # plain steps before a probe
        self.next_pause = self.FIRST_PAUSE
        self.time_draft = fixed is None  # time the first draft step once

    def draft_too_slow(self, seconds: float) -> bool:
        """After timing the draft's first (eager) step: True, and a long pause, if it took
        over SLOW_DRAFT plain target steps (the margin is the eager call's host overhead)."""
        self.time_draft = False
        if self.plain_tps is None or seconds * self.plain_tps < self.SLOW_DRAFT:
            return False
        self.pause = self.LONGEST_PAUSE
        self.next_pause = self.LONGEST_PAUSE
        self.k = 1
        return True

    def next(self) -> int:
        """Tokens to draft in the next round; 0 means one plain decode step."""
        if self.pause > 0:
            self.pause -= 1
            return 0
        return self.k

    def plain_step(self, seconds: float) -> None:
        self.plain_tps = _running(self.plain_tps, 1 / max(seconds, 1e-9), self.ALPHA)

    def update(self, drafted: int, accepted: int, seconds: float = 0.0) -> None:
        """Record a round: `accepted` of `drafted` kept, `seconds` spent on it."""
        if self.fixed is not None or drafted == 0:
            return
        self.rate = (1 - self.ALPHA) * self.rate + self.ALPHA * accepted / drafted
        if seconds > 0:
            self.round_tps = _running(self.round_tps, (accepted + 1) / seconds, self.ALPHA)
        slower = self.plain_tps is not None and self.round_tps is not None and (
            self.round_tps < self.plain_tps)
        if self.rate < self.GIVE_UP or slower:
            self.k, self.rate, self.round_tps = 1, 0.5, None  # the probe starts afresh
            self.pause = self.next_pause
            self.next_pause = min(2 * self.next_pause, self.LONGEST_PAUSE)
            return
        self.next_pause = self.FIRST_PAUSE
        if self.rate >= self.GROW:
            self.k = min(self.k + 1, self.most)
        elif self.rate < self.SHRINK:
            self.k = max(self.k - 1, 1)


def _running(average: float | None, value: float, alpha: float) -> float:
    return value if average is None else (1 - alpha) * average + alpha * value
