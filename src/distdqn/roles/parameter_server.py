"""The ParameterServer role: the authoritative flat parameters and their version."""

from __future__ import annotations

import numpy as np


class ParameterServer:
    """Holds one flat float32 parameter vector and an integer version.

    In the Ape-X topology the learner owns the optimizer and publishes with
    :meth:`set_params`; actors and the evaluator pull with :meth:`get_params`.

    Args:
        initial: ``[P]`` float32 initial parameters (version 0).
    """

    def __init__(self, initial: np.ndarray):
        self._params = np.array(initial, dtype=np.float32, copy=True)
        self.version = 0

    @property
    def num_params(self) -> int:
        return int(self._params.size)

    def set_params(self, flat: np.ndarray) -> int:
        """Publish new parameters; returns the new version.

        Raises:
            ValueError: wrong length.
        """
        if flat.size != self._params.size:
            raise ValueError(f"parameter vector has {flat.size} values, expected {self._params.size}")
        self._params[...] = flat
        self.version += 1
        return self.version

    def get_params(self, newer_than: int = -1) -> tuple[int, np.ndarray] | None:
        """``(version, copy of params)`` if the version is newer than ``newer_than``, else None."""
        if self.version <= newer_than:
            return None
        return self.version, self._params.copy()

    def state_dict(self) -> dict:
        import torch

        return {"params": torch.from_numpy(self._params.copy()), "version": self.version}

    def load_state_dict(self, state: dict) -> None:
        self._params[...] = state["params"].numpy()
        self.version = int(state["version"])
