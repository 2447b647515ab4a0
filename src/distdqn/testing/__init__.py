"""Helpers for tests and fault drills: :mod:`distdqn.testing.envs` (the ``distdqn/...``
environments, registered when first asked for)."""
