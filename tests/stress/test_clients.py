"""Hundreds of misbehaving clients at once, round after round, then a leak audit.

Each round's clients run in a process of their own against the server in this one, with
the server's default timeouts: a round lasts about a minute (clients that stop reading
hold on past the 30 s write timeout), five rounds about six minutes on 2 cores.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from . import runs

pytestmark = pytest.mark.slow

CLIENTS = int(os.environ.get("VOXTRIO_STRESS_CLIENTS", "300"))
ROUNDS = int(os.environ.get("VOXTRIO_STRESS_ROUNDS", "5"))


async def test_hundreds_of_misbehaving_clients_leave_no_leaks(
    start_server: Callable[..., Any],
) -> None:
    """Rounds of 300 clients: one terminal per request, no leak, no error, no reader cut."""
    figures = await runs.chaos_rounds(start_server, rounds=ROUNDS, clients=CLIENTS, name="clients")
    assert runs.chaos_problems(figures) == []
