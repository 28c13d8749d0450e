"""vLLM in-process as a diagnosis backend.

The engine is created once from a local folder and answers under the model-output JSON schema
(structured outputs; ``GuidedDecodingParams`` on older vLLM).
"""

from __future__ import annotations

import threading
from pathlib import Path

from failrecov_ros.core.schema import MODEL_OUTPUT_SCHEMA
from failrecov_ros.models import prompting
from failrecov_ros.models.base import ModelLoadError, Window
from failrecov_ros.models.openai_server import data_url
from failrecov_ros.models.registry import ModelSpec


def _sampling_params(vllm, max_tokens: int):
    """Greedy sampling constrained to the schema, in whichever spelling this vLLM has."""
    try:
        from vllm.sampling_params import StructuredOutputsParams

        constraint = {"structured_outputs": StructuredOutputsParams(json=MODEL_OUTPUT_SCHEMA)}
    except ImportError:
        from vllm.sampling_params import GuidedDecodingParams

        constraint = {"guided_decoding": GuidedDecodingParams(json=MODEL_OUTPUT_SCHEMA)}
    return vllm.SamplingParams(temperature=0.0, max_tokens=max_tokens, **constraint)


class VllmEngine:
    """A ``vllm.LLM`` behind DiagnosisModel; one request at a time from the monitor."""

    def __init__(self, llm, sampling, spec: ModelSpec):
        self.llm, self.sampling, self.spec = llm, sampling, spec
        self.name = spec.display_name
        self._lock = threading.Lock()

    @classmethod
    def load(cls, spec: ModelSpec) -> VllmEngine:
        """Start the engine on ``spec.path``; ModelLoadError with vLLM's reason on failure."""
        try:
            import vllm
        except ImportError as exc:
            raise ModelLoadError(f"the vllm backend needs vLLM installed: {exc}") from None
        try:
            llm = vllm.LLM(model=str(Path(spec.path)), limit_mm_per_prompt={"image":
                                                                             spec.max_images},
                           enforce_eager=True)
            sampling = _sampling_params(vllm, spec.max_new_tokens)
        except Exception as exc:  # noqa: BLE001 - engine start-up fails in many ways
            raise ModelLoadError(f"vLLM could not start {spec.path}: {type(exc).__name__}: "
                                 f"{exc}") from None
        return cls(llm, sampling, spec)

    def predict(self, window: Window) -> str:
        """One constrained generation."""
        frames = prompting.select_frames(window, self.spec.max_images)
        parts = [{"type": "image_url", "image_url": {"url": data_url(image)}}
                 for image in prompting.images(window, frames)]
        with self._lock:
            outputs = self.llm.chat(prompting.messages(window, frames, parts), self.sampling,
                                    use_tqdm=False)
        return outputs[0].outputs[0].text

    def close(self) -> None:
        """Drop the engine (vLLM frees its memory when the object goes)."""
        self.llm = None
