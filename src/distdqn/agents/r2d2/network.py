"""R2D2's recurrent Q-network (Kapturowski et al. 2019, sec. 2.3 and App. B): a torso (an
MLP for vectors, the Nature CNN for images), an LSTM that also takes the previous action
(one-hot) and the previous reward, and a dueling head (Wang et al. 2016, eq. 9)."""

from __future__ import annotations

import torch
from torch import nn

from distdqn.agents.dqn.networks import QHead, network_kind

State = tuple[torch.Tensor, torch.Tensor]
"""``(h, c)``, each ``[B, lstm_size]`` float32."""


class R2D2Network(nn.Module):
    """``forward(obs [B, L, *obs_shape], prev_action [B, L] int64, prev_reward [B, L] float,
    state) -> (q [B, L, A] float32, state)``.

    Args:
        obs_shape, num_actions: of the env.
        kind: ``mlp`` or ``nature_cnn`` (the torso).
        hidden_sizes: the MLP torso's widths.
        lstm_size: the LSTM's hidden width.
        dueling: a dueling head.
    """

    def __init__(self, obs_shape: tuple[int, ...], num_actions: int, kind: str, hidden_sizes: tuple[int, ...],
                 lstm_size: int, dueling: bool = True):
        super().__init__()
        self.num_actions, self.lstm_size, self.kind = num_actions, lstm_size, kind
        if kind == "nature_cnn":
            c = obs_shape[0]
            self.torso = nn.Sequential(nn.Conv2d(c, 32, 8, 4), nn.ReLU(), nn.Conv2d(32, 64, 4, 2), nn.ReLU(),
                                       nn.Conv2d(64, 64, 3, 1), nn.ReLU(), nn.Flatten())
            with torch.no_grad():
                feat = int(self.torso(torch.zeros(1, *obs_shape)).shape[1])
        else:
            layers: list[nn.Module] = [nn.Flatten()]
            last = 1
            for d in obs_shape:
                last *= int(d)
            for w in hidden_sizes:
                layers += [nn.Linear(last, w), nn.ReLU()]
                last = w
            self.torso, feat = nn.Sequential(*layers), last
        self.lstm = nn.LSTM(feat + num_actions + 1, lstm_size, batch_first=True)
        self.head = QHead(lstm_size, num_actions, dueling)

    def initial_state(self, batch: int) -> State:
        z = torch.zeros(batch, self.lstm_size)
        return z, z.clone()

    def forward(self, obs: torch.Tensor, prev_action: torch.Tensor, prev_reward: torch.Tensor,
                state: State) -> tuple[torch.Tensor, State]:
        b, steps = obs.shape[0], obs.shape[1]
        x = obs.reshape(b * steps, *obs.shape[2:]).float()
        if self.kind == "nature_cnn":
            x = x / 255.0
        feat = self.torso(x).reshape(b, steps, -1)
        onehot = nn.functional.one_hot(prev_action.clamp(min=0), self.num_actions).float()
        onehot = onehot * (prev_action >= 0).unsqueeze(-1).float()  # -1: no previous action
        inp = torch.cat([feat, onehot, prev_reward.float().unsqueeze(-1)], dim=-1)
        h, c = state
        out, (h1, c1) = self.lstm(inp, (h.unsqueeze(0).contiguous(), c.unsqueeze(0).contiguous()))
        q = self.head(out.reshape(b * steps, -1)).reshape(b, steps, self.num_actions)
        return q, (h1.squeeze(0), c1.squeeze(0))


def make_r2d2_network(net_cfg, r2d2_cfg, obs_shape: tuple[int, ...], num_actions: int) -> R2D2Network:
    """The network for ``network`` and ``r2d2`` config sections: the Nature CNN torso for
    Atari-sized images, else the MLP torso; dueling unless ``network.dueling`` is false."""
    kind = "nature_cnn" if network_kind(net_cfg, obs_shape)[0] == "nature_cnn" else "mlp"
    dueling = True if net_cfg.dueling is None else bool(net_cfg.dueling)
    return R2D2Network(obs_shape, num_actions, kind, tuple(net_cfg.hidden_sizes), r2d2_cfg.lstm_size, dueling)
