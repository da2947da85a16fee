"""Session registry: owns guest sessions and each booth's active session.

Guest registration, code lookup, the booth active session in Redis (``activeSession:{boothId}``)
and the booth_sessions record behind it. Registration and Pro Capture land with issues 3 and 4.
"""

from __future__ import annotations

from photobot.supervisor import ChildContext


async def run(ctx: ChildContext) -> None:
    """Ready at once; holds no work yet, so a graceful stop has nothing to checkpoint."""
    ctx.started()
    await ctx.stopping.wait()
