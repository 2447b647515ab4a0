"""Q-networks: MLP, Nature CNN (Mnih et al. 2015), a small CNN for grids, optional dueling
head (Wang et al. 2016).

All networks map observations ``[B, *obs_shape]`` to Q-values ``[B, num_actions]`` float32.
"""

from __future__ import annotations

import torch
from torch import nn

from distdqn.config import ConfigError, NetworkConfig


class QHead(nn.Module):
    """Linear Q head, or dueling: Q(s,a) = V(s) + A(s,a) - mean_a' A(s,a')
    (Wang et al. 2016, "Dueling Network Architectures", eq. 9).

    Input ``[B, in_features]`` float32, output ``[B, num_actions]`` float32.
    """

    def __init__(self, in_features: int, num_actions: int, dueling: bool, hidden: int | None = None):
        super().__init__()
        self.dueling = dueling
        if dueling:
            h = hidden or in_features
            self.value = nn.Sequential(nn.Linear(in_features, h), nn.ReLU(), nn.Linear(h, 1))
            self.advantage = nn.Sequential(nn.Linear(in_features, h), nn.ReLU(), nn.Linear(h, num_actions))
        else:
            self.q = nn.Linear(in_features, num_actions)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.dueling:
            return self.q(x)
        a = self.advantage(x)
        return self.value(x) + a - a.mean(dim=1, keepdim=True)


class MLPQNetwork(nn.Module):
    """MLP torso (ReLU) + Q head. Observations are flattened and cast to float32."""

    def __init__(self, obs_dim: int, num_actions: int, hidden_sizes: tuple[int, ...], dueling: bool):
        super().__init__()
        layers: list[nn.Module] = []
        last = obs_dim
        for h in hidden_sizes[:-1] if dueling else hidden_sizes:
            layers += [nn.Linear(last, h), nn.ReLU()]
            last = h
        self.torso = nn.Sequential(*layers)
        # The dueling streams take the last hidden width as their own hidden layer.
        self.head = QHead(last, num_actions, dueling, hidden=hidden_sizes[-1])

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.reshape(obs.shape[0], -1).float()
        return self.head(self.torso(x))


class NatureCNN(nn.Module):
    """The DQN convolutional network (Mnih et al. 2015, Nature, "Methods: Model architecture").

    Input ``[B, C, 84, 84]`` uint8 (frame stack as channels), scaled by 1/255 inside.
    Conv 32x8x8/4, 64x4x4/2, 64x3x3/1, FC 512, then the Q head.
    """

    def __init__(self, obs_shape: tuple[int, ...], num_actions: int, dueling: bool):
        super().__init__()
        c = obs_shape[0]
        self.torso = nn.Sequential(
            nn.Conv2d(c, 32, 8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            n = self.torso(torch.zeros(1, *obs_shape)).shape[1]
        if dueling:
            self.fc = nn.Identity()
            self.head = QHead(n, num_actions, True, hidden=512)
        else:
            self.fc = nn.Sequential(nn.Linear(n, 512), nn.ReLU())
            self.head = QHead(512, num_actions, False)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.float() / 255.0
        return self.head(self.fc(self.torso(x)))


NATURE_CNN_MIN_SIDE = 36
"""The Nature CNN's convolutions (8/4, 4/2, 3/1) need images at least this high and wide."""


class SmallCNN(nn.Module):
    """A CNN for small grids (board games, grid worlds): two 3x3 convolutions of stride 1 that
    keep the grid's size (16 and 32 channels), FC 128, then the Q head.

    Input ``[B, C, H, W]`` of any dtype, as float; uint8 images are scaled by 1/255.
    """

    def __init__(self, obs_shape: tuple[int, ...], num_actions: int, dueling: bool):
        super().__init__()
        c, h, w = obs_shape
        self.torso = nn.Sequential(
            nn.Conv2d(c, 16, 3, stride=1, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=1, padding=1), nn.ReLU(),
            nn.Flatten(),
            nn.Linear(32 * h * w, 128), nn.ReLU(),
        )
        self.head = QHead(128, num_actions, dueling)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.float()
        if obs.dtype == torch.uint8:
            x = x / 255.0
        return self.head(self.torso(x))


def network_kind(cfg: NetworkConfig, obs_shape: tuple[int, ...]) -> tuple[str, bool]:
    """``(kind, dueling)`` with the defaults resolved: ``auto`` is the Nature CNN for 3-D
    observations (channels first) at least :data:`NATURE_CNN_MIN_SIDE` high and wide, the
    small CNN for smaller ones, else the MLP; ``dueling=None`` is on for the Nature CNN only."""
    kind = cfg.kind
    if kind == "auto":
        if len(obs_shape) == 3:
            kind = "nature_cnn" if min(obs_shape[1:]) >= NATURE_CNN_MIN_SIDE else "small_cnn"
        else:
            kind = "mlp"
    dueling = cfg.dueling if cfg.dueling is not None else kind == "nature_cnn"
    return kind, bool(dueling)


def make_network(cfg: NetworkConfig, obs_shape: tuple[int, ...], num_actions: int) -> nn.Module:
    """Build the Q-network the config names (defaults resolved by :func:`network_kind`).

    Raises:
        ConfigError: ``network.kind`` names a CNN for observations it cannot take.
    """
    kind, dueling = network_kind(cfg, obs_shape)
    if kind in ("nature_cnn", "small_cnn"):
        if len(obs_shape) != 3:
            raise ConfigError("network.kind", kind, f"mlp or auto for observations of shape {obs_shape} "
                              "(the CNNs take [channels, height, width] images)")
        if kind == "nature_cnn" and min(obs_shape[1:]) < NATURE_CNN_MIN_SIDE:
            raise ConfigError("network.kind", kind, f"small_cnn or auto for {obs_shape[1]}x{obs_shape[2]} images "
                              f"(the Nature CNN needs at least {NATURE_CNN_MIN_SIDE}x{NATURE_CNN_MIN_SIDE})")
        return (NatureCNN if kind == "nature_cnn" else SmallCNN)(obs_shape, num_actions, dueling)
    obs_dim = 1
    for d in obs_shape:
        obs_dim *= int(d)
    return MLPQNetwork(obs_dim, num_actions, tuple(cfg.hidden_sizes), dueling)
