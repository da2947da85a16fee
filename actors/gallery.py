"""Gallery broadcaster: one room per event, fan-out of published photos to guests' websockets.

Reads ``Wiring.publish``; each guest connection has a bounded queue and is dropped when it falls
behind. Lands with issue 5.
"""

from __future__ import annotations

from photobot.supervisor import ChildContext


async def run(ctx: ChildContext) -> None:
    """Ready at once; holds no work yet, so a graceful stop has nothing to checkpoint."""
    ctx.started()
    await ctx.stopping.wait()
