"""AI providers: one interface, several engines (``local``, ``comfyui``, ``kie``).

The worker pool (``actors/pool.py``) owns retries, back-off, circuit breakers and fallback; a
provider only does one attempt and says, through the class of the error it raises, whether
trying again could help.
"""

from photobot.config import Settings
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
    "build_providers",
    "concurrency",
]


def build_providers(settings: Settings) -> dict[str, Provider]:
    """The providers this booth can use: ``local`` always; the others when configured."""
    from photobot.providers.local import LocalProvider

    providers: dict[str, Provider] = {
        "local": LocalProvider(max_threads=settings.worker_concurrency_local)
    }
    if settings.comfy_api_base_url:
        from photobot.providers.comfyui import ComfyUIProvider

        providers["comfyui"] = ComfyUIProvider(
            settings.comfy_api_base_url,
            workflow_path=settings.comfy_workflow_path,
            timeout=settings.comfy_timeout_seconds,
        )
    if settings.kie_api_key is not None:
        from photobot.providers.kie import KieProvider

        providers["kie"] = KieProvider(
            settings.kie_api_key.get_secret_value(), base_url=settings.kie_api_base_url
        )
    return providers


def concurrency(settings: Settings) -> dict[str, int]:
    return {
        "local": settings.worker_concurrency_local,
        "comfyui": settings.worker_concurrency_comfy,
        "kie": settings.worker_concurrency_kie,
    }
