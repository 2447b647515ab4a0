"""Tests of distdqn.config: validation messages, YAML + overrides, round trips."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import yaml

from distdqn.config import (
    ConfigError,
    ExperimentConfig,
    apply_overrides,
    error_buffer,
    from_dict,
    load_yaml,
    replace,
    to_dict,
)


def nested(key: str, value) -> dict:
    out: dict = {}
    node = out
    *parents, last = key.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return out


def test_defaults_validate() -> None:
    cfg = ExperimentConfig()
    assert cfg.replay.capacity == 100_000 and cfg.learner.batch_size == 64
    assert from_dict({}) == cfg
    # default error buffer: 4 * max(samples_per_insert, transitions per learning step)
    assert error_buffer(cfg) == 4.0 * 64 * 4  # 4 x max(spi=16, batch_size=64 x batches_per_sample=4)


INVALID = [
    ("replay.capacity", 0),
    ("actor.n_step", 0),
    ("learner.gamma", 1.5),
    ("learner.gamma", 0.0),
    ("learner.batch_size", 0),
    ("learner.tau", 0.0),
    ("learner.tau", 1.5),
    ("learner.learning_rate", -1e-3),
    ("learner.max_grad_norm", 0.0),
    ("learner.target_update_period", 0),
    ("env.envs_per_actor", 0),
    ("env.sticky_actions", 1.0),
    ("env.max_episode_steps", 0),
    ("actor.epsilon_start", 1.5),
    ("actor.epsilon_end", -0.1),
    ("actor.chunk_size", 0),
    ("actor.num_actors", 0),
    ("replay.priority_exponent", -0.5),
    ("replay.importance_sampling_exponent", 1.5),
    ("replay.priority_epsilon", 0.0),
    ("replay.samples_per_insert", -1.0),
    ("eval.eval_episodes", 0),
    ("eval.epsilon", 2.0),
    ("keep_checkpoints", 0),
    ("total_env_steps", 0),
    ("seed", -1),
]


@pytest.mark.parametrize("key,value", INVALID, ids=[f"{k}={v}" for k, v in INVALID])
def test_invalid_value_names_key_and_value(key: str, value) -> None:
    with pytest.raises(ConfigError) as exc:
        from_dict(nested(key, value))
    err = exc.value
    assert isinstance(err, ValueError)
    assert err.key == key
    assert err.value == value
    msg = str(err)
    assert f"{key}={value!r}" in msg
    assert "allowed" in msg
    # replace() with a dotted key gives the same error
    with pytest.raises(ConfigError) as exc2:
        replace(ExperimentConfig(), **{key: value})
    assert exc2.value.key == key


def test_nan_values_rejected() -> None:
    for key in ("learner.gamma", "learner.learning_rate", "replay.priority_exponent", "eval.epsilon"):
        with pytest.raises(ConfigError) as exc:
            from_dict(nested(key, math.nan))
        assert exc.value.key == key and "nan" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        from_dict(nested("learner.learning_rate", math.inf))
    assert exc.value.key == "learner.learning_rate"


@pytest.mark.parametrize(
    "key,value,allowed",
    [
        ("replay.kind", "fifo", ["prioritized", "uniform"]),
        ("learner.optimizer", "sgd", ["adam", "rmsprop"]),
        ("learner.loss", "l1", ["huber", "mse"]),
        ("runtime", "mpi", ["serial", "local", "ray"]),
        ("network.kind", "resnet", ["auto", "mlp", "nature_cnn"]),
        ("replay.initial_priority", "min", ["max", "actor"]),
    ],
)
def test_literal_lists_allowed_values(key: str, value: str, allowed: list[str]) -> None:
    with pytest.raises(ConfigError) as exc:
        from_dict(nested(key, value))
    msg = str(exc.value)
    assert exc.value.key == key and f"{key}={value!r}" in msg
    for a in allowed:
        assert a in msg


@pytest.mark.parametrize("key", ["replay.capcity", "sede", "learner.gama"])
def test_unknown_key_named(key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        from_dict(nested(key, 5))
    assert exc.value.key == key
    assert key in str(exc.value)
    if key == "replay.capcity":
        assert "capacity" in exc.value.allowed


def test_unknown_key_through_replace() -> None:
    with pytest.raises(ConfigError, match=r"replay\.capcity"):
        replace(ExperimentConfig(), **{"replay.capcity": 10})


def test_unknown_preset() -> None:
    with pytest.raises(ConfigError) as exc:
        from_dict({"preset": "rainbow"})
    assert exc.value.key == "preset" and "'rainbow'" in str(exc.value) and "apex" in str(exc.value)


def test_error_buffer_smaller_than_batch_deadlock() -> None:
    with pytest.raises(ConfigError) as exc:
        from_dict({"replay": {"error_buffer": 64.0},  # spi 16 -> need 128
                   "learner": {"batch_size": 128, "batches_per_sample": 1}})
    assert exc.value.key == "replay.error_buffer"
    assert "replay.error_buffer=64.0" in str(exc.value)
    assert "128" in str(exc.value) and "deadlock" in str(exc.value)
    # exactly the bound is fine
    assert from_dict({"replay": {"error_buffer": 128.0},
                      "learner": {"batch_size": 128, "batches_per_sample": 1}}).replay.error_buffer == 128.0
    # an apex step samples batches_per_sample batches at once: 3 x 64 = 192 needed
    with pytest.raises(ConfigError) as exc:
        from_dict({"replay": {"error_buffer": 128.0}, "learner": {"batch_size": 64, "batches_per_sample": 3}})
    assert exc.value.key == "replay.error_buffer" and "192" in str(exc.value)


def test_error_buffer_smaller_than_samples_per_insert() -> None:
    data = {"replay": {"samples_per_insert": 200.0, "error_buffer": 150.0}, "learner": {"batches_per_sample": 1}}
    with pytest.raises(ConfigError) as exc:
        from_dict(data)
    assert exc.value.key == "replay.error_buffer" and "200" in str(exc.value)
    # the default (None) resolves to 4 * 200 = 800 and is fine
    cfg = from_dict({"replay": {"samples_per_insert": 200.0}, "learner": {"batches_per_sample": 1}})
    assert error_buffer(cfg) == 800.0


def test_error_buffer_not_checked_without_rate_limiting() -> None:
    cfg = from_dict({"replay": {"samples_per_insert": 0.0, "error_buffer": 1.0}})
    assert cfg.replay.error_buffer == 1.0


def test_min_replay_size_below_batch_size() -> None:
    with pytest.raises(ConfigError) as exc:
        from_dict({"replay": {"min_replay_size": 64}, "learner": {"batch_size": 128}})
    assert exc.value.key == "replay.min_replay_size"
    assert "replay.min_replay_size=64" in str(exc.value) and "128" in str(exc.value)


def test_min_replay_size_above_capacity() -> None:
    with pytest.raises(ConfigError) as exc:
        from_dict({"replay": {"min_replay_size": 2000, "capacity": 1500}})
    assert exc.value.key == "replay.min_replay_size" and "1500" in str(exc.value)


@pytest.mark.parametrize(
    "key,value",
    [("replay.capacity", "abc"), ("replay.capacity", 2.5), ("network.dueling", "maybe"), ("learner.gamma", "x"),
     ("replay.capacity", True), ("network.hidden_sizes", "abc"), ("env", 5)],
)
def test_uncoercible_types(key: str, value) -> None:
    with pytest.raises(ConfigError) as exc:
        from_dict(nested(key, value))
    assert exc.value.key == key


@pytest.mark.parametrize("hidden", [[], [64, 0]])
def test_bad_hidden_sizes(hidden) -> None:
    with pytest.raises(ConfigError) as exc:
        from_dict({"network": {"hidden_sizes": hidden}})
    assert exc.value.key == "network.hidden_sizes"


# ----------------------------------------------------------------------------- YAML and overrides


def test_yaml_and_overrides(tmp_path: Path) -> None:
    p = tmp_path / "exp.yaml"
    p.write_text(
        "runtime: serial\n"
        "seed: 3\n"
        "env:\n  id: CartPole-v1\n  max_episode_steps: 200\n"
        "network:\n  hidden_sizes: [64, 64]\n"
        "replay:\n  capacity: 20000\n"
    )
    data = load_yaml(p)
    data = apply_overrides(
        data,
        [
            "replay.capacity=5000",  # int
            "replay.min_replay_size=1e3",  # YAML string "1e3" -> int 1000
            "network.hidden_sizes=[32, 16]",  # list -> tuple
            "env.max_episode_steps=null",  # None
            "learner.tau=0.5",
            "learner.learning_rate=3e-4",  # YAML string -> float
            "network.dueling=false",
            "actor.n_step=5",
            "eval.target_return=none",
        ],
    )
    cfg = from_dict(data)
    assert cfg.runtime == "serial" and cfg.seed == 3
    assert cfg.replay.capacity == 5000 and type(cfg.replay.capacity) is int
    assert cfg.replay.min_replay_size == 1000 and type(cfg.replay.min_replay_size) is int
    assert cfg.network.hidden_sizes == (32, 16)
    assert cfg.env.max_episode_steps is None
    assert cfg.learner.tau == 0.5
    assert cfg.learner.learning_rate == pytest.approx(3e-4) and type(cfg.learner.learning_rate) is float
    assert cfg.network.dueling is False
    assert cfg.actor.n_step == 5
    assert cfg.eval.target_return is None


def test_coercion_from_strings() -> None:
    cfg = from_dict(
        {
            "replay": {"capacity": "5000", "error_buffer": "256"},
            "learner": {"gamma": "0.9", "max_grad_norm": "null"},
            "network": {"hidden_sizes": 64, "dueling": "yes"},
            "env": {"max_episode_steps": "100"},
            "actor": {"chunk_size": 32.0},
        }
    )
    assert cfg.replay.capacity == 5000 and type(cfg.replay.capacity) is int
    assert cfg.replay.error_buffer == 256.0 and type(cfg.replay.error_buffer) is float
    assert cfg.learner.gamma == 0.9 and cfg.learner.max_grad_norm is None
    assert cfg.network.hidden_sizes == (64,) and cfg.network.dueling is True
    assert cfg.env.max_episode_steps == 100 and cfg.actor.chunk_size == 32 and type(cfg.actor.chunk_size) is int


def test_override_creates_missing_sections_and_coerces() -> None:
    data = apply_overrides({}, ["learner.batch_size=64", "replay.min_replay_size=64", "seed=7"])
    assert data == {"learner": {"batch_size": 64}, "replay": {"min_replay_size": 64}, "seed": 7}
    cfg = from_dict(data)
    assert cfg.learner.batch_size == 64 and cfg.seed == 7


def test_override_value_may_contain_equals_sign() -> None:
    data = apply_overrides({}, ["env.id=Foo=Bar-v0"])
    assert data["env"]["id"] == "Foo=Bar-v0"


def test_override_without_equals() -> None:
    with pytest.raises(ConfigError) as exc:
        apply_overrides({}, ["replay.capacity"])
    assert exc.value.key == "--set" and "replay.capacity" in str(exc.value)


def test_apply_overrides_top_level_does_not_mutate_input() -> None:
    data = {"seed": 1}
    out = apply_overrides(data, ["seed=2"])
    assert data == {"seed": 1} and out == {"seed": 2}


def test_apply_overrides_does_not_mutate_nested_input() -> None:
    data = {"replay": {"capacity": 10}}
    snapshot = copy.deepcopy(data)
    out = apply_overrides(data, ["replay.capacity=20"])
    assert out == {"replay": {"capacity": 20}}
    assert data == snapshot


def test_load_yaml_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_yaml(tmp_path / "missing.yaml")
    assert exc.value.key == "--config" and "missing.yaml" in str(exc.value)
    p = tmp_path / "list.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="list.yaml"):
        load_yaml(p)
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_yaml(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_yaml(empty) == {}


# ----------------------------------------------------------------------------- round trips


def test_to_dict_from_dict_round_trip_default() -> None:
    cfg = ExperimentConfig()
    d = to_dict(cfg)
    assert d["network"]["hidden_sizes"] == [128, 128]  # tuples become lists
    assert from_dict(d) == cfg


def test_to_dict_from_dict_round_trip_non_default_via_yaml(tmp_path: Path) -> None:
    cfg = replace(
        ExperimentConfig(),
        **{
            "runtime": "serial",
            "network.hidden_sizes": (32, 16, 8),
            "learner.tau": 0.05,
            "learner.max_grad_norm": None,
            "env.max_episode_steps": 123,
            "replay.kind": "uniform",
            "replay.error_buffer": 1000.0,
            "actor.epsilon_schedule": "apex",
            "eval.target_return": None,
        },
    )
    d = to_dict(cfg)
    assert from_dict(d) == cfg
    p = tmp_path / "resolved.yaml"
    p.write_text(yaml.safe_dump(d))
    again = from_dict(load_yaml(p))
    assert again == cfg
    assert again.network.hidden_sizes == (32, 16, 8)


def test_replace_returns_validated_copy() -> None:
    cfg = ExperimentConfig()
    new = replace(cfg, **{"replay.capacity": 5000, "actor.chunk_size": 8})
    assert new.replay.capacity == 5000 and new.actor.chunk_size == 8
    assert cfg.replay.capacity == 100_000 and cfg.actor.chunk_size == 256
    with pytest.raises(Exception):
        cfg.replay.capacity = 5  # type: ignore[misc]  (frozen)


def test_batches_per_sample_is_for_apex() -> None:
    assert from_dict({"preset": "gorila"}).learner.batches_per_sample == 1
    assert from_dict({"preset": "sync"}).learner.batches_per_sample == 1
    with pytest.raises(ConfigError) as exc:
        from_dict({"preset": "gorila", "learner": {"batches_per_sample": 4}})
    assert exc.value.key == "learner.batches_per_sample" and "gorila" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        from_dict({"learner": {"batches_per_sample": 0}})
    assert exc.value.key == "learner.batches_per_sample"


def test_config_error_survives_pickling_with_its_fields():
    """Ray hands a role's exceptions to the driver pickled."""
    import pickle

    from distdqn.config import ConfigError

    err = pickle.loads(pickle.dumps(ConfigError("replay.capacity", 0, "an integer > 0")))
    assert (err.key, err.value, err.allowed) == ("replay.capacity", 0, "an integer > 0")
    assert str(err) == "invalid config: replay.capacity=0; allowed: an integer > 0"
