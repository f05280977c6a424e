"""voxcpm's CFM Euler solve (UnifiedCFM.solve_euler) over many rows at once.

Differences from upstream, none of them in the math: `cfg_value` and the number of
timesteps are per row, and the initial noise is given (drawn per row from each
request's own generator), so a row's result does not depend on which other rows
share the solve. Each row's t and dt come from a table built once with upstream's
own scalar recurrence, so that one fixed-shape Euler iteration serves rows with any
`inference_timesteps`: a row past its last step (or in upstream's zero-velocity
first step) keeps its x unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from voxcpm.modules.locdit.unified_cfm import UnifiedCFM

MAX_TIMESTEPS = 50  # the protocol's bound on `inference_timesteps`


def time_span(n_timesteps: int, *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Upstream's sway-sampled schedule (sway_sampling_coef = 1)."""
    span = torch.linspace(1, 0, n_timesteps + 1, device=device, dtype=dtype)
    return span + (torch.cos(torch.pi / 2 * span) - 1 + span)


def zero_init_steps(n_timesteps: int) -> int:
    """Upstream's leading iterations with zero velocity (CFG-zero*)."""
    return max(1, int((n_timesteps + 1) * 0.04))


class EulerSchedule:
    """t and dt before each iteration, and whether the estimator runs, for every n.

    Row n of each table is upstream's loop for `inference_timesteps = n`; column k is
    iteration k + 1. Row 0 (padding rows) never runs.
    """

    def __init__(self, *, device: torch.device, dtype: torch.dtype) -> None:
        shape = (MAX_TIMESTEPS + 1, MAX_TIMESTEPS)
        self.t = torch.zeros(shape, device=device, dtype=dtype)
        self.dt = torch.zeros(shape, device=device, dtype=dtype)
        self.live = torch.zeros(shape, device=device, dtype=torch.bool)
        for n in range(1, MAX_TIMESTEPS + 1):
            span = time_span(n, device=device, dtype=dtype)
            t, dt = span[0], span[0] - span[1]
            for step in range(1, n + 1):
                self.t[n, step - 1], self.dt[n, step - 1] = t, dt
                self.live[n, step - 1] = step > zero_init_steps(n)
                t = t - dt
                if step < n:
                    dt = t - span[step + 1]

    @staticmethod
    def iterations(timesteps: list[int]) -> range:
        """The iterations (0-based columns) in which at least one of these rows moves."""
        first = min(zero_init_steps(n) for n in timesteps)
        return range(first, max(timesteps))


def draw_noise(
    cfm: UnifiedCFM, patch_size: int, generator: torch.Generator, *, dtype: torch.dtype
) -> torch.Tensor:
    """One row's initial noise, drawn exactly as upstream draws it for batch 1."""
    device = generator.device
    return torch.randn(
        (1, cfm.in_channels, patch_size), device=device, dtype=dtype, generator=generator
    )


def euler_iteration(
    estimator: torch.nn.Module,
    *,
    mean_mode: bool,
    x: torch.Tensor,
    mu_in: torch.Tensor,
    cond_in: torch.Tensor,
    t: torch.Tensor,
    dt: torch.Tensor,
    live: torch.Tensor,
    cfg: torch.Tensor,
) -> torch.Tensor:
    """One guided Euler iteration for B rows.

    x [B, C, P]; mu_in [2B, H] and cond_in [2B, C, P'] (conditional rows, then the
    unconditional ones); t, dt [B]; live [B] bool; cfg [B] float32 -> x [B, C, P].
    """
    rows = x.size(0)
    x_in = torch.cat([x, x])
    t_in = torch.cat([t, t])
    # Upstream feeds dt only in mean mode (zeros otherwise).
    dt_in = torch.cat([dt, dt]) if mean_mode else torch.zeros_like(t_in)
    out = estimator(x_in, mu_in, t_in, cond_in, dt_in)
    positive, negative = out[:rows], out[rows:]
    dot = torch.sum(positive.reshape(rows, -1) * negative.reshape(rows, -1), dim=1, keepdim=True)
    norm = torch.sum(negative.reshape(rows, -1) ** 2, dim=1, keepdim=True) + 1e-8
    st_star = (dot / norm).view(rows, 1, 1)
    # Kept in float32: upstream multiplies by a Python float, i.e. at op precision.
    guided = (positive - negative * st_star).mul(cfg.view(rows, 1, 1)).to(x.dtype)
    velocity = negative * st_star + guided
    return torch.where(live.view(rows, 1, 1), x - dt.view(rows, 1, 1) * velocity, x)
