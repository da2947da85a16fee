"""Job dispatcher: persists jobs, hands them to the pool, recovers unfinished jobs at start.

Reads ``Wiring.dispatch``; writes ``Wiring.work``. Lands with issue 3.
"""

from __future__ import annotations

from photobot.supervisor import ChildContext


async def run(ctx: ChildContext) -> None:
    """Ready at once; holds no work yet, so a graceful stop has nothing to checkpoint."""
    ctx.started()
    await ctx.stopping.wait()
