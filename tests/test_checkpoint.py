"""Tests of distdqn.checkpoint: atomic save, pruning, verification, safe loading."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from distdqn.io import checkpoint as ckpt_mod
from distdqn.io.checkpoint import (
    CheckpointError,
    complete_checkpoints,
    load_checkpoint,
    load_latest,
    save_checkpoint,
)


def state(k: int) -> dict:
    return {
        "weights": torch.arange(6, dtype=torch.float32).reshape(2, 3) * k,
        "nested": {"ids": torch.tensor([k, k + 1], dtype=torch.int64), "name": f"run-{k}"},
        "list": [torch.zeros(2), 1.5, k],
        "updates": k,
        "lr": 1e-3,
        "flag": True,
        "none": None,
    }


def assert_state_equal(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    assert torch.equal(got["weights"], want["weights"]) and got["weights"].dtype == torch.float32
    assert torch.equal(got["nested"]["ids"], want["nested"]["ids"]) and got["nested"]["name"] == want["nested"]["name"]
    assert torch.equal(got["list"][0], want["list"][0]) and got["list"][1:] == want["list"][1:]
    for k in ("updates", "lr", "flag", "none"):
        assert got[k] == want[k] and type(got[k]) is type(want[k])


def test_save_load_latest_round_trip(tmp_path: Path) -> None:
    assert load_latest(tmp_path) is None
    path = save_checkpoint(tmp_path, env_steps=1000, updates=50, state=state(3))
    assert path == tmp_path / "checkpoints" / "ckpt-000000001000-0000000050.pt"
    marker = json.loads(path.with_suffix(".complete").read_text())
    assert marker["file"] == path.name and marker["size"] == path.stat().st_size
    assert marker["env_steps"] == 1000 and marker["updates"] == 50 and len(marker["sha256"]) == 64
    got_path, got = load_latest(tmp_path)
    assert got_path == path
    assert_state_equal(got, state(3))
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))


def test_newest_is_loaded_and_keep_prunes(tmp_path: Path) -> None:
    paths = [save_checkpoint(tmp_path, 100 * i, 10 * i, state(i), keep=2) for i in range(1, 5)]
    ckdir = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckdir.iterdir()) == sorted(
        [paths[2].name, paths[2].with_suffix(".complete").name, paths[3].name, paths[3].with_suffix(".complete").name]
    )
    assert complete_checkpoints(tmp_path) == [paths[3], paths[2]]
    got_path, got = load_latest(tmp_path)
    assert got_path == paths[3]
    assert_state_equal(got, state(4))


def test_ordering_is_numeric_not_lexicographic(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 9, 1, state(1), keep=5)
    save_checkpoint(tmp_path, 10, 2, state(2), keep=5)
    path, got = load_latest(tmp_path)
    assert got["updates"] == 2 and "000000000010" in path.name


def _two(tmp_path: Path):
    old = save_checkpoint(tmp_path, 100, 1, state(1), keep=3)
    new = save_checkpoint(tmp_path, 200, 2, state(2), keep=3)
    return old, new


def test_truncated_checkpoint_refused_and_fallback(tmp_path: Path, caplog) -> None:
    old, new = _two(tmp_path)
    data = new.read_bytes()
    new.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(new)
    assert str(new) in str(exc.value) and "truncated" in str(exc.value)
    with caplog.at_level(logging.WARNING, logger="distdqn.checkpoint"):
        got_path, got = load_latest(tmp_path)
    assert got_path == old
    assert_state_equal(got, state(1))
    assert str(new) in caplog.text


def test_flipped_bytes_refused_and_fallback(tmp_path: Path) -> None:
    old, new = _two(tmp_path)
    data = bytearray(new.read_bytes())
    mid = len(data) // 2
    data[mid] ^= 0xFF
    data[mid + 1] ^= 0x01
    new.write_bytes(bytes(data))
    assert new.stat().st_size == len(data)  # same size: only the hash can tell
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(new)
    assert str(new) in str(exc.value) and "corrupt" in str(exc.value)
    got_path, got = load_latest(tmp_path)
    assert got_path == old and got["updates"] == 1


def test_all_corrupt_gives_none(tmp_path: Path) -> None:
    old, new = _two(tmp_path)
    for p in (old, new):
        p.write_bytes(b"garbage")
    assert load_latest(tmp_path) is None


def test_pt_without_marker_is_ignored(tmp_path: Path) -> None:
    old, new = _two(tmp_path)
    # a newer .pt without marker (crash before the marker was written)
    orphan = tmp_path / "checkpoints" / "ckpt-000000000300-0000000003.pt"
    torch.save(state(3), orphan)
    assert orphan not in complete_checkpoints(tmp_path)
    got_path, got = load_latest(tmp_path)
    assert got_path == new and got["updates"] == 2
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(orphan)
    assert str(orphan) in str(exc.value)


def test_missing_pt_with_marker_refused(tmp_path: Path) -> None:
    old, new = _two(tmp_path)
    new.unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(new)
    assert load_latest(tmp_path)[0] == old


class Evil:
    """A picklable non-tensor object; unpickling it would run ``__setstate__``."""

    unpickled = False

    def __init__(self) -> None:
        self.x = 1

    def __setstate__(self, st) -> None:
        Evil.unpickled = True
        self.__dict__.update(st)


def test_arbitrary_objects_refused_even_with_valid_marker(tmp_path: Path) -> None:
    old = save_checkpoint(tmp_path, 100, 1, state(1), keep=3)
    evil = save_checkpoint(tmp_path, 200, 2, {"obj": Evil(), "updates": 2}, keep=3)
    Evil.unpickled = False
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(evil)
    assert str(evil) in str(exc.value) and "unreadable" in str(exc.value)
    assert not Evil.unpickled
    got_path, got = load_latest(tmp_path)
    assert got_path == old
    assert not Evil.unpickled


def test_torch_load_called_with_weights_only(tmp_path: Path, monkeypatch) -> None:
    path = save_checkpoint(tmp_path, 1, 1, state(1))
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(ckpt_mod.torch, "load", spy)
    load_checkpoint(path)
    assert calls and all(c.get("weights_only") is True for c in calls)


def test_save_after_fallback_keeps_the_new_checkpoint(tmp_path: Path) -> None:
    old = save_checkpoint(tmp_path, 100, 1, state(1), keep=1)
    bad = save_checkpoint(tmp_path, 300, 3, state(3), keep=1)
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    # old was pruned by keep=1 when bad was written; resume from scratch and save again at 200
    assert not old.exists()
    assert load_latest(tmp_path) is None
    new = save_checkpoint(tmp_path, 200, 2, state(2), keep=1)
    assert new.exists()
    got = load_latest(tmp_path)
    assert got is not None and got[0] == new and got[1]["updates"] == 2
