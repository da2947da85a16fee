"""AI providers: one interface, several engines (``local``, ``comfyui``, ``kie``).

The worker pool (``actors/pool.py``) owns retries, back-off, circuit breakers and fallback; a
provider only does one attempt and says, through the class of the error it raises, whether
trying again could help.
"""

from photobot.providers.base import (
    FatalProviderError,
    OutputImage,
    Progress,
    Provider,
    ProviderError,
    ProviderInput,
    ProviderOutput,
    TransientProviderError,
)

__all__ = [
    "FatalProviderError",
    "OutputImage",
    "Progress",
    "Provider",
    "ProviderError",
    "ProviderInput",
    "ProviderOutput",
    "TransientProviderError",
]
