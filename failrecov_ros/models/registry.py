"""Pick and load a backend by name; heavy libraries are imported only for the one chosen."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from failrecov_ros.models.base import DiagnosisModel, ModelLoadError

BACKENDS = ("compact", "transformers", "vllm", "openai")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Which model to load and how (the monitor's ``model.*`` parameters).

    ``path`` is a local folder (compact checkpoint, transformers/vLLM weights; nothing is
    ever downloaded); ``endpoint`` is an OpenAI-compatible base URL with ``served_name`` the
    model it serves; the API key is read from the environment variable ``api_key_env``.
    """

    backend: str = "compact"
    path: str = ""
    name: str = ""
    endpoint: str = ""
    served_name: str = ""
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 10.0
    retries: int = 1
    max_new_tokens: int = 512
    max_images: int = 4
    threads: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"model backend {self.backend!r} is not one of {', '.join(BACKENDS)}")
        if self.backend == "openai":
            if not self.endpoint:
                raise ValueError("model backend 'openai' needs an endpoint (base URL)")
        elif not self.path:
            raise ValueError(f"model backend {self.backend!r} needs a local path")
        if (self.timeout_s <= 0 or self.retries < 0 or self.max_new_tokens < 1
                or self.max_images < 1):
            raise ValueError("timeout_s must be > 0, retries >= 0, max_new_tokens >= 1 and "
                             "max_images >= 1")

    @property
    def display_name(self) -> str:
        """What diagnoses report as ``model_name``."""
        if self.name:
            return self.name
        if self.backend == "openai":
            return f"openai:{self.served_name or self.endpoint}"
        return f"{self.backend}:{Path(self.path).name}"


def load_model(spec: ModelSpec) -> DiagnosisModel:
    """Load the backend ``spec`` names; ModelLoadError says why it could not."""
    if spec.backend in ("compact", "transformers", "vllm") and not Path(spec.path).exists():
        raise ModelLoadError(f"{spec.backend} model path {spec.path!r} does not exist")
    if spec.backend == "compact":
        from failrecov_ros.models.compact import CompactModel

        return CompactModel.load(spec.path, name=spec.display_name, threads=spec.threads or None)
    if spec.backend == "transformers":
        from failrecov_ros.models.transformers_vlm import TransformersVlm

        return TransformersVlm.load(spec)
    if spec.backend == "vllm":
        from failrecov_ros.models.vllm_engine import VllmEngine

        return VllmEngine.load(spec)
    from failrecov_ros.models.openai_server import OpenAiServer

    return OpenAiServer.connect(spec)
