"""CCTV poller: cuts each guest's booth video from a Hikvision NVR.

Batches ``READY_FOR_BATCH`` clip requests and reads ``Wiring.clip_trigger``. Lands with issue 7.
"""

from __future__ import annotations

from photobot.supervisor import ChildContext


async def run(ctx: ChildContext) -> None:
    """Ready at once; holds no work yet, so a graceful stop has nothing to checkpoint."""
    ctx.started()
    await ctx.stopping.wait()
