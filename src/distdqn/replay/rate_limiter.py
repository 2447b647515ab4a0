"""Sample-to-insert ratio limiter, in the style of Reverb's ``SampleToInsertRatio``."""

from __future__ import annotations

from typing import Any

from distdqn.config import ConfigError


class RateLimiter:
    """Keeps ``samples / inserts`` near ``samples_per_insert`` (the replay ratio).

    Counts are in transitions: inserting a chunk of T counts T, sampling a batch of B
    counts B. The limiter tracks::

        diff = inserts * samples_per_insert - samples

    i.e. how many more transitions may be sampled than the ratio has "earned" so far.
    With ``offset = min_size_to_sample * samples_per_insert`` it keeps ``diff`` inside
    ``[offset - error_buffer, offset + error_buffer]``:

    * an insert of ``n`` is allowed while the replay is smaller than
      ``min_size_to_sample`` (filling up), or when limiting is off
      (``samples_per_insert == 0``), or when ``diff + n * spi <= max_diff``
      (inserting would not run too far ahead of the learner);
    * a sample of ``batch`` is refused while the replay is smaller than
      ``min_size_to_sample``; otherwise allowed when limiting is off, or when
      ``diff - batch >= min_diff`` (sampling would not run ahead of the actors).

    At the moment the replay reaches ``min_size_to_sample`` (with no samples yet),
    ``diff == offset``, so sampling can start as soon as ``error_buffer >= batch``.

    Deadlock: with single-transition inserts both operations are blocked only if
    ``2 * error_buffer < samples_per_insert + batch``, which ``error_buffer >=
    max(samples_per_insert, batch_size)`` rules out (checked in the constructor, as
    :func:`distdqn.config.validate` does). Chunked inserts of ``n`` need more room
    (``2 * error_buffer >= n * spi + batch``); so that a too-small buffer cannot stall a
    run, an insert is also allowed whenever a sample of ``batch_size`` is currently
    refused for lack of inserts. This only changes the answer in states that would
    otherwise be deadlocked, and ``diff`` stays bounded by
    ``min_diff + batch_size + n * spi``.

    The limiter only answers questions and counts; callers block or retry.

    Args:
        samples_per_insert: target sampled transitions per inserted transition; 0 disables limiting.
        min_size_to_sample: no sampling while the replay holds fewer transitions.
        error_buffer: allowed drift of ``diff`` around ``offset`` (in transitions sampled).
        batch_size: the learner's batch size (for the deadlock check).

    Raises:
        ConfigError: ``replay.samples_per_insert`` if negative; ``replay.min_replay_size``
            if negative; ``learner.batch_size`` if < 1; ``replay.error_buffer`` if
            ``samples_per_insert > 0`` and ``error_buffer < max(samples_per_insert, batch_size)``.
    """

    def __init__(self, samples_per_insert: float, min_size_to_sample: int, error_buffer: float, batch_size: int):
        spi = float(samples_per_insert)
        if not spi >= 0.0:
            raise ConfigError("replay.samples_per_insert", samples_per_insert, ">= 0")
        if int(min_size_to_sample) < 0:
            raise ConfigError("replay.min_replay_size", min_size_to_sample, "an integer >= 0")
        if int(batch_size) < 1:
            raise ConfigError("learner.batch_size", batch_size, "an integer > 0")
        need = max(spi, float(batch_size))
        if spi > 0 and not float(error_buffer) >= need:
            raise ConfigError(
                "replay.error_buffer",
                error_buffer,
                f">= max(samples_per_insert, batch_size) = {need}, or the rate limiter can deadlock "
                "(neither an insert nor a sample would be allowed)",
            )
        self.samples_per_insert: float = spi
        self.min_size_to_sample: int = int(min_size_to_sample)
        self.error_buffer: float = float(error_buffer)
        self.batch_size: int = int(batch_size)
        offset = self.min_size_to_sample * spi
        self.min_diff: float = offset - self.error_buffer
        self.max_diff: float = offset + self.error_buffer
        self.inserts: int = 0
        self.samples: int = 0

    @property
    def diff(self) -> float:
        """``inserts * samples_per_insert - samples``."""
        return self.inserts * self.samples_per_insert - self.samples

    def can_insert(self, n: int, size: int) -> bool:
        """Whether inserting ``n`` transitions now keeps the ratio (``size``: transitions held)."""
        if size < self.min_size_to_sample or self.samples_per_insert == 0.0:
            return True
        diff = self.diff
        if diff + n * self.samples_per_insert <= self.max_diff:
            return True
        # Deadlock breaker: if the learner cannot sample, inserting is the only way forward.
        return diff - self.batch_size < self.min_diff

    def can_sample(self, batch: int, size: int) -> bool:
        """Whether sampling ``batch`` transitions now keeps the ratio (``size``: transitions held)."""
        if size < self.min_size_to_sample:
            return False
        if self.samples_per_insert == 0.0:
            return True
        return self.diff - batch >= self.min_diff

    def on_insert(self, n: int) -> None:
        """Record ``n`` inserted transitions."""
        self.inserts += int(n)

    def on_sample(self, batch: int) -> None:
        """Record ``batch`` sampled transitions."""
        self.samples += int(batch)

    def state_dict(self) -> dict[str, Any]:
        """Counters and settings as Python ints/floats."""
        return {
            "inserts": self.inserts,
            "samples": self.samples,
            "samples_per_insert": self.samples_per_insert,
            "min_size_to_sample": self.min_size_to_sample,
            "error_buffer": self.error_buffer,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the counters (the settings stay those given to the constructor)."""
        self.inserts = int(state["inserts"])
        self.samples = int(state["samples"])
