"""voxcpm's CFM Euler solve (UnifiedCFM.solve_euler) over many rows at once.

Differences from upstream, none of them in the math: `cfg_value` is per row and
the initial noise is given (drawn per row from each request's own generator), so a
row's result does not depend on which other rows share the solve. Rows with
different `inference_timesteps` go through separate solves (`solve_grouped`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from voxcpm.modules.locdit.unified_cfm import UnifiedCFM


def time_span(n_timesteps: int, *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Upstream's sway-sampled schedule (sway_sampling_coef = 1)."""
    span = torch.linspace(1, 0, n_timesteps + 1, device=device, dtype=dtype)
    return span + (torch.cos(torch.pi / 2 * span) - 1 + span)


def eager(module: torch.nn.Module) -> torch.nn.Module:
    """The module itself when voxcpm's `optimize` wrapped it in torch.compile.

    Upstream compiles with CUDA graphs for its fixed batch of 1; batch sizes vary here.
    """
    return getattr(module, "_orig_mod", module)


def draw_noise(
    cfm: UnifiedCFM, patch_size: int, generator: torch.Generator, *, dtype: torch.dtype
) -> torch.Tensor:
    """One row's initial noise, drawn exactly as upstream draws it for batch 1."""
    device = generator.device
    return torch.randn(
        (1, cfm.in_channels, patch_size), device=device, dtype=dtype, generator=generator
    )


def solve(
    cfm: UnifiedCFM,
    noise: torch.Tensor,
    mu: torch.Tensor,
    cond: torch.Tensor,
    cfg_value: torch.Tensor,
    n_timesteps: int,
) -> torch.Tensor:
    """Euler-solve rows sharing `n_timesteps`.

    noise [B, C, P], mu [B, H], cond [B, C, P'], cfg_value [B] -> [B, C, P].
    """
    t_span = time_span(n_timesteps, device=mu.device, dtype=mu.dtype)
    x = noise
    rows = x.size(0)
    t, dt = t_span[0], t_span[0] - t_span[1]
    zero_init_steps = max(1, int(len(t_span) * 0.04))
    # Kept in float32: upstream multiplies by a Python float, i.e. at op precision.
    cfg = cfg_value.to(device=x.device, dtype=torch.float32).view(rows, 1, 1)
    estimator = eager(cfm.estimator)
    mu_in = torch.cat([mu, torch.zeros_like(mu)])
    cond_in = torch.cat([cond, cond])
    for step in range(1, len(t_span)):
        if step <= zero_init_steps:
            velocity = torch.zeros_like(x)
        else:
            x_in = torch.cat([x, x])
            t_in = t.expand(2 * rows).contiguous()
            # Upstream feeds dt only in mean mode (zeros otherwise).
            dt_in = dt.expand(2 * rows).contiguous() if cfm.mean_mode else torch.zeros_like(t_in)
            out = estimator(x_in, mu_in, t_in, cond_in, dt_in)
            positive, negative = out[:rows], out[rows:]
            dot = torch.sum(
                positive.reshape(rows, -1) * negative.reshape(rows, -1), dim=1, keepdim=True
            )
            norm = torch.sum(negative.reshape(rows, -1) ** 2, dim=1, keepdim=True) + 1e-8
            st_star = (dot / norm).view(rows, 1, 1)
            guided = (positive - negative * st_star).mul(cfg).to(x.dtype)
            velocity = negative * st_star + guided
        x = x - dt * velocity
        t = t - dt
        if step < len(t_span) - 1:
            dt = t - t_span[step + 1]
    return x


def solve_grouped(
    cfm: UnifiedCFM,
    noise: torch.Tensor,
    mu: torch.Tensor,
    cond: torch.Tensor,
    cfg_value: torch.Tensor,
    timesteps: Sequence[int],
) -> torch.Tensor:
    """`solve` per group of rows with equal `timesteps`; results back in row order."""
    if len(set(timesteps)) == 1:
        return solve(cfm, noise, mu, cond, cfg_value, timesteps[0])
    out = torch.empty_like(noise)
    for steps in sorted(set(timesteps)):
        index = torch.tensor(
            [i for i, n in enumerate(timesteps) if n == steps], device=noise.device
        )
        out[index] = solve(cfm, noise[index], mu[index], cond[index], cfg_value[index], steps)
    return out
