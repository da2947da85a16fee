"""Hotfolder watcher: turns each complete image a tethered camera writes into exactly one job.

Watches ``HOTFOLDER_PATH`` for ``BOOTH_ID``. Lands with issue 4.
"""

from __future__ import annotations

from photobot.supervisor import ChildContext


async def run(ctx: ChildContext) -> None:
    """Ready at once; holds no work yet, so a graceful stop has nothing to checkpoint."""
    ctx.started()
    await ctx.stopping.wait()
