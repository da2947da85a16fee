"""AI worker pool: runs jobs through a provider (local, comfyui, kie) with per-provider concurrency.

Reads ``Wiring.work``; records attempts and progress in PostgreSQL. Lands with issue 3.
"""

from __future__ import annotations

from photobot.supervisor import ChildContext


async def run(ctx: ChildContext) -> None:
    """Ready at once; holds no work yet, so a graceful stop has nothing to checkpoint."""
    ctx.started()
    await ctx.stopping.wait()
