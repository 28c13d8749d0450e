"""A local transformers VLM (Qwen2-VL / Qwen2.5-VL, LLaVA-OneVision, SmolVLM / Idefics3).

Loaded once from a local folder with ``local_files_only`` (never a download), prompted with
the instruction and a few frames through the model's own chat template, decoded greedily.
Its text goes through the same parser and validator as every backend.
"""

from __future__ import annotations

import threading
from pathlib import Path

from failrecov_ros.models import prompting
from failrecov_ros.models.base import ModelLoadError, Window
from failrecov_ros.models.registry import ModelSpec


class TransformersVlm:
    """An ``AutoModelForImageTextToText`` + ``AutoProcessor`` pair behind DiagnosisModel."""

    def __init__(self, model, processor, spec: ModelSpec):
        self.model, self.processor, self.spec = model, processor, spec
        self.name = spec.display_name
        self._lock = threading.Lock()  # generate() is not re-entrant on one model

    @classmethod
    def load(cls, spec: ModelSpec) -> TransformersVlm:
        """Load weights and processor from ``spec.path``; ModelLoadError on any problem."""
        try:
            import torch
            from transformers import AutoModelForImageTextToText, AutoProcessor
        except ImportError as exc:
            raise ModelLoadError(f"the transformers backend needs torch and transformers: "
                                 f"{exc}") from None
        path = Path(spec.path)
        try:
            processor = AutoProcessor.from_pretrained(path, local_files_only=True)
            model = AutoModelForImageTextToText.from_pretrained(
                path, local_files_only=True, dtype="auto").to(spec.device).eval()
        except Exception as exc:  # noqa: BLE001 - transformers raises many unrelated types
            raise ModelLoadError(f"cannot load a transformers VLM from {path}: "
                                 f"{type(exc).__name__}: {exc}") from None
        if spec.threads:
            torch.set_num_threads(spec.threads)
        return cls(model, processor, spec)

    def prompt(self, window: Window, frames: list[int]) -> str:
        """The chat-templated prompt text for ``frames`` of ``window``."""
        placeholders = [{"type": "image"} for _ in frames]
        chat = prompting.messages(window, frames, placeholders)
        try:
            return self.processor.apply_chat_template(chat, add_generation_prompt=True)
        except Exception:  # noqa: BLE001 - templates without a system role raise their own errors
            system = chat[0]["content"][0]["text"]
            user = chat[1]
            user["content"][-1]["text"] = system + "\n" + user["content"][-1]["text"]
            return self.processor.apply_chat_template([user], add_generation_prompt=True)

    def predict(self, window: Window) -> str:
        """Generate the answer text for one window (greedy, ``max_new_tokens``)."""
        import torch

        frames = prompting.select_frames(window, self.spec.max_images)
        text = self.prompt(window, frames)
        inputs = self.processor(text=[text], images=[prompting.images(window, frames)],
                                return_tensors="pt").to(self.spec.device)
        with self._lock, torch.inference_mode():
            output = self.model.generate(**inputs, max_new_tokens=self.spec.max_new_tokens,
                                         do_sample=False)
        new_tokens = output[:, inputs["input_ids"].shape[1]:]
        return self.processor.batch_decode(new_tokens, skip_special_tokens=True)[0]

    def close(self) -> None:
        """Drop the weights."""
        self.model = None
