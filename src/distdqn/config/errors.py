"""The error every invalid config value raises."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """An invalid configuration value.

    Attributes:
        key: dotted key, e.g. ``replay.capacity``.
        value: the offending value.
        allowed: human-readable description of what is allowed.
    """

    def __init__(self, key: str, value: Any, allowed: str, message: str | None = None):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(message or f"invalid config: {key}={value!r}; allowed: {allowed}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from its own fields when unpickled (Ray hands a role's errors to the
        # driver this way; the default would call __init__ with the message alone).
        return type(self), (self.key, self.value, self.allowed, str(self))
