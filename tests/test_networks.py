"""Tests of distdqn.networks and the flat-parameter helpers of distdqn.core."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distdqn.config import NetworkConfig
from distdqn.core import flat_params, load_flat_params
from distdqn.agents.dqn.networks import MLPQNetwork, NatureCNN, make_network, network_kind


def net(kind="mlp", hidden=(16, 8), dueling=False, obs_shape=(4,), actions=3, seed=0):
    torch.manual_seed(seed)
    return make_network(NetworkConfig(kind=kind, hidden_sizes=hidden, dueling=dueling), obs_shape, actions)


@pytest.mark.parametrize("dueling", [False, True])
def test_mlp_output_shape_and_dtype(dueling: bool) -> None:
    m = net(dueling=dueling)
    assert isinstance(m, MLPQNetwork)
    q = m(torch.randn(5, 4))
    assert q.shape == (5, 3) and q.dtype == torch.float32
    # float64 or int observations are cast to float32
    assert m(torch.zeros(2, 4, dtype=torch.float64)).dtype == torch.float32


def test_mlp_flattens_multi_dim_observations() -> None:
    m = net(kind="auto", obs_shape=(2, 3), actions=2)
    assert isinstance(m, MLPQNetwork)
    x = torch.randn(4, 2, 3)
    torch.testing.assert_close(m(x), m(x.reshape(4, 6)))


def test_mlp_layer_sizes() -> None:
    m = net(hidden=(16, 8), dueling=False)
    linears = [l for l in m.modules() if isinstance(l, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(4, 16), (16, 8), (8, 3)]
    d = net(hidden=(16, 8), dueling=True)
    # dueling: torso is all but the last width; both streams use the last width as hidden layer
    assert [(l.in_features, l.out_features) for l in d.torso if isinstance(l, torch.nn.Linear)] == [(4, 16)]
    assert (d.head.value[0].in_features, d.head.value[0].out_features, d.head.value[2].out_features) == (16, 8, 1)
    assert (d.head.advantage[0].out_features, d.head.advantage[2].out_features) == (8, 3)


def test_dueling_head_identity() -> None:
    m = net(dueling=True, actions=4)
    x = torch.randn(6, 4)
    with torch.no_grad():
        q = m(x)
        feat = m.torso(x)
        v = m.head.value(feat)
        a = m.head.advantage(feat)
    assert v.shape == (6, 1) and a.shape == (6, 4)
    # mean over actions of (Q - V) == 0
    torch.testing.assert_close((q - v).mean(dim=1), torch.zeros(6), atol=1e-5, rtol=0)
    # Q - mean_a Q == A - mean_a A
    torch.testing.assert_close(q - q.mean(1, keepdim=True), a - a.mean(1, keepdim=True), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(q, v + a - a.mean(1, keepdim=True))


def test_nature_cnn_uint8_shape_and_scaling() -> None:
    torch.manual_seed(0)
    m = make_network(NetworkConfig(kind="nature_cnn", dueling=False), (4, 84, 84), 6)
    assert isinstance(m, NatureCNN)
    x = torch.randint(0, 256, (2, 4, 84, 84), dtype=torch.uint8)
    with torch.no_grad():
        q = m(x)
        ref = m.head(m.fc(m.torso(x.float() / 255.0)))
    assert q.shape == (2, 6) and q.dtype == torch.float32
    torch.testing.assert_close(q, ref)
    # torso output is 64 x 7 x 7 for 84x84 inputs; FC 512
    assert m.fc[0].in_features == 3136 and m.fc[0].out_features == 512


def test_auto_picks_cnn_for_3d_obs_and_dueling_cnn() -> None:
    torch.manual_seed(0)
    m = make_network(NetworkConfig(kind="auto", dueling=True), (4, 84, 84), 5)
    assert isinstance(m, NatureCNN)
    with torch.no_grad():
        q = m(torch.zeros(2, 4, 84, 84, dtype=torch.uint8))
    assert q.shape == (2, 5)
    assert isinstance(make_network(NetworkConfig(kind="auto"), (4,), 2), MLPQNetwork)


def test_default_dueling_is_on_for_the_cnn_and_off_for_the_mlp() -> None:
    assert NetworkConfig().dueling is None
    cnn = make_network(NetworkConfig(), (4, 84, 84), 5)
    mlp = make_network(NetworkConfig(), (4,), 2)
    assert cnn.head.dueling and not mlp.head.dueling
    assert network_kind(NetworkConfig(), (4,)) == ("mlp", False)
    assert network_kind(NetworkConfig(dueling=True), (4,)) == ("mlp", True)
    assert network_kind(NetworkConfig(kind="nature_cnn", dueling=False), (4, 84, 84)) == ("nature_cnn", False)


def test_nature_cnn_with_1d_obs_raises() -> None:
    with pytest.raises(ValueError, match=r"nature_cnn.*\(4,\)"):
        make_network(NetworkConfig(kind="nature_cnn"), (4,), 2)


def test_flat_params_round_trip() -> None:
    a, b = net(seed=0), net(seed=1)
    fa = flat_params(a)
    assert fa.dtype == np.float32 and fa.ndim == 1
    assert fa.size == sum(p.numel() for p in a.parameters())
    # layout: state_dict order
    first = next(iter(a.state_dict().values()))
    np.testing.assert_array_equal(fa[: first.numel()], first.reshape(-1).numpy())
    assert not np.array_equal(fa, flat_params(b))
    load_flat_params(b, fa)
    np.testing.assert_array_equal(flat_params(b), fa)
    x = torch.randn(3, 4)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    # a torch tensor works too, and flat_params is a copy (editing it does not touch the net)
    fa[:] = 0
    assert not np.all(flat_params(a) == 0)
    load_flat_params(b, torch.zeros(fa.size))
    assert np.all(flat_params(b) == 0)


@pytest.mark.parametrize("delta", [-1, 1])
def test_load_flat_params_length_mismatch(delta: int) -> None:
    m = net()
    flat = flat_params(m)
    wrong = np.zeros(flat.size + delta, dtype=np.float32)
    with pytest.raises(ValueError, match=str(flat.size)):
        load_flat_params(m, wrong)
    np.testing.assert_array_equal(flat_params(m), flat)  # untouched
