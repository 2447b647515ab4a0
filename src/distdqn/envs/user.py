"""Environments a user brings: ``env.id`` as a registered Gymnasium id, Gymnasium's
``module:id``, or an entry point ``package.module:callable`` (``path/to/file.py:callable``
too), with ``env.imports`` (modules imported first, in every process that makes envs) and
``env.kwargs`` (passed to the constructor or to ``gymnasium.make``).

Every mistake is an :class:`~distdqn.envs.spec.EnvSpecError` of one line naming the id:
an unknown module, an unknown id, an entry point that is not callable, a constructor
that raises (its message is shown) or returns something that is not an env.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

import gymnasium

from distdqn.config import EnvConfig
from distdqn.envs.spec import EXAMPLE_IDS, EnvSpecError, is_atari

__all__ = ["absolute_paths", "check_id", "import_modules", "load_module", "resolve"]

TESTING_PREFIX = "distdqn/"
"""Ids of the fault-drill envs, registered on first use by :mod:`distdqn.testing.envs`."""


def load_module(name: str, what: str) -> ModuleType:
    """Import module ``name``, or load the Python file ``name`` (a path ending in ``.py``).

    Raises:
        EnvSpecError: it cannot be imported (``what`` names the config key in the message).
    """
    try:
        if _is_path(name):
            path = os.path.abspath(name)
            mod_name = "distdqn_user_env_" + os.path.splitext(os.path.basename(path))[0]
            if mod_name in sys.modules:
                return sys.modules[mod_name]
            spec = importlib.util.spec_from_file_location(mod_name, path)
            if spec is None or spec.loader is None or not os.path.isfile(path):
                raise FileNotFoundError(f"no Python file {path}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            spec.loader.exec_module(module)
            return module
        return importlib.import_module(name)
    except EnvSpecError:
        raise
    except Exception as exc:  # noqa: BLE001 - any import failure is the user's to fix: say which
        sys.modules.pop("distdqn_user_env_" + os.path.splitext(os.path.basename(name))[0], None)
        raise EnvSpecError(f"{what}: cannot import {name!r} ({type(exc).__name__}: {exc})") from None


def _is_path(name: str) -> bool:
    return name.endswith(".py") or os.sep in name


def absolute_paths(cfg: EnvConfig) -> EnvConfig:
    """``cfg`` with the Python files of ``env.id`` and ``env.imports`` made absolute, so that
    every process (a Ray worker starts in a directory of Ray's own) loads the same file and
    a run's ``config.yaml`` still finds it when resumed from elsewhere."""
    env_id = cfg.id
    if ":" in env_id:
        mod_name, name = env_id.rsplit(":", 1)
        if _is_path(mod_name):
            env_id = f"{os.path.abspath(mod_name)}:{name}"
    imports = tuple(os.path.abspath(m) if _is_path(m) else m for m in cfg.imports)
    if (env_id, imports) == (cfg.id, cfg.imports):
        return cfg
    return dataclasses.replace(cfg, id=env_id, imports=imports)


def import_modules(names: tuple[str, ...]) -> None:
    """``env.imports``: import each (a no-op for those already imported).

    Raises:
        EnvSpecError: one cannot be imported.
    """
    for name in names:
        load_module(name, "env.imports")


def check_id(env_id: str) -> None:
    """Raises :class:`EnvSpecError` (with a close match, if any) unless ``env_id`` is registered."""
    if env_id.startswith(TESTING_PREFIX) and env_id not in gymnasium.registry:
        importlib.import_module("distdqn.testing.envs")  # registers the distdqn/... ids
    if env_id in gymnasium.registry:
        return
    hint = ""
    close = difflib.get_close_matches(env_id, list(gymnasium.registry.keys()), n=1, cutoff=0.75)
    if close:
        hint = f" (did you mean {close[0]!r}?)"
    elif is_atari(env_id):
        hint = " (Atari ids need the ale-py package)"
    raise EnvSpecError(
        f"unknown environment id {env_id!r}{hint}; use a registered Gymnasium id ({EXAMPLE_IDS}), "
        "'module:id' to import the module that registers it, or an entry point 'package.module:callable'"
    )


def _attribute(module: ModuleType, dotted: str) -> Any:
    obj: Any = module
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def resolve(cfg: EnvConfig) -> tuple[str, Callable[..., gymnasium.Env]]:
    """Where ``cfg.id`` leads, after importing ``cfg.imports``. The maker takes keyword
    arguments (``env.kwargs`` and, for registered ids, ``max_episode_steps``) and returns
    the env.

    Returns ``(kind, maker)``: ``kind`` is ``"registered"`` (``gymnasium.make`` of a
    registered id, possibly after importing its module) or ``"entry point"`` (a callable).

    Raises:
        EnvSpecError: an unknown module or id, an entry point that is not callable.
    """
    import_modules(cfg.imports)
    env_id = cfg.id
    if ":" not in env_id:
        check_id(env_id)
        return "registered", lambda **kw: gymnasium.make(env_id, **kw)
    mod_name, name = env_id.rsplit(":", 1)
    module = load_module(mod_name, f"env.id={env_id!r}")
    if name in gymnasium.registry:
        return "registered", lambda **kw: gymnasium.make(name, **kw)
    try:
        obj = _attribute(module, name)
    except AttributeError:
        raise EnvSpecError(f"env.id={env_id!r}: module {mod_name!r} registers no environment {name!r} and has "
                           f"no attribute {name!r}; use 'module:registered-id' or 'module:callable'") from None
    if not callable(obj):
        raise EnvSpecError(f"env.id={env_id!r}: {name!r} is a {type(obj).__name__}, not a callable that "
                           "returns an environment")
    return "entry point", obj


def construct(cfg: EnvConfig, maker: Callable[..., gymnasium.Env], kwargs: dict[str, Any]) -> gymnasium.Env:
    """``maker(**kwargs)``, checked to be a Gymnasium env.

    Raises:
        EnvSpecError: the constructor raised (its message is shown) or returned another type.
    """
    try:
        env = maker(**kwargs)
    except EnvSpecError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's env failed to build: say how, in one line
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise EnvSpecError(f"env.id={cfg.id!r}: making the environment raised {type(exc).__name__}: {msg}") from None
    if not isinstance(env, gymnasium.Env):
        raise EnvSpecError(f"env.id={cfg.id!r}: the entry point returned a {type(env).__name__}, "
                           "not a gymnasium.Env")
    return env
