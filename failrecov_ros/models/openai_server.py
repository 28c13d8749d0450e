"""Any OpenAI-compatible server (``vllm serve`` and friends) as a diagnosis backend.

Frames travel as JPEG data URLs in the chat message; the answer is constrained to the
model-output JSON schema with vLLM's ``structured_outputs``, or ``guided_json`` for servers
older than 0.10.2 (found from ``/version``; older servers ignore unknown fields silently, so
the spelling must be chosen up front; a 400 naming the field switches too). Timeouts and
retries are the client's; the API key is read from an environment variable, never from a
parameter file.
"""

from __future__ import annotations

import base64
import io
import json
import os
import urllib.request

from failrecov_ros.core.schema import MODEL_OUTPUT_SCHEMA
from failrecov_ros.models import prompting
from failrecov_ros.models.base import ModelLoadError, Window
from failrecov_ros.models.registry import ModelSpec

#: First vLLM release that reads ``structured_outputs`` (``guided_json`` went in 0.12).
STRUCTURED_OUTPUTS_SINCE = (0, 10, 2)


def constraint_for_version(version: str | None) -> str:
    """Which request field constrains decoding on a server reporting ``version``.

    Unknown or unparsable versions (other OpenAI-compatible servers) get the current field.
    """
    if not version:
        return "structured_outputs"
    parts = []
    for piece in version.split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    if len(parts) < 2:
        return "structured_outputs"
    return "structured_outputs" if tuple(parts) >= STRUCTURED_OUTPUTS_SINCE else "guided_json"


def server_version(endpoint: str, timeout_s: float) -> str | None:
    """The server's vLLM version from ``/version`` (beside ``/v1``), or None without one."""
    root = endpoint.rstrip("/").removesuffix("/v1")
    try:
        with urllib.request.urlopen(f"{root}/version", timeout=timeout_s) as reply:
            return str(json.loads(reply.read().decode("utf-8")).get("version") or "") or None
    except (OSError, ValueError, AttributeError):
        return None


def data_url(image, quality: int = 90) -> str:
    """A PIL image as a ``data:image/jpeg;base64,...`` URL."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class OpenAiServer:
    """A chat-completions client bound to one served model."""

    def __init__(self, client, spec: ModelSpec, served_name: str,
                 constraint: str = "structured_outputs"):
        self.client, self.spec, self.served_name = client, spec, served_name
        self.name = spec.display_name
        self.constraint = constraint

    @classmethod
    def connect(cls, spec: ModelSpec) -> OpenAiServer:
        """Create the client and check the server answers (and serves the model named)."""
        try:
            import openai
        except ImportError as exc:
            raise ModelLoadError(f"the openai backend needs the openai package: {exc}") from None
        client = openai.OpenAI(base_url=spec.endpoint,
                               api_key=os.environ.get(spec.api_key_env) or "EMPTY",
                               timeout=spec.timeout_s, max_retries=spec.retries)
        try:
            served = [m.id for m in client.models.list()]
        except openai.OpenAIError as exc:
            raise ModelLoadError(f"server {spec.endpoint} did not answer: "
                                 f"{type(exc).__name__}: {exc}") from None
        name = spec.served_name or (served[0] if served else "")
        if not name or name not in served:
            raise ModelLoadError(f"server {spec.endpoint} serves {served}, not "
                                 f"{spec.served_name!r}")
        constraint = constraint_for_version(server_version(spec.endpoint, spec.timeout_s))
        return cls(client, spec, name, constraint)

    def _request(self, window: Window) -> dict:
        frames = prompting.select_frames(window, self.spec.max_images)
        parts = [{"type": "image_url", "image_url": {"url": data_url(image)}}
                 for image in prompting.images(window, frames)]
        return {"model": self.served_name, "messages": prompting.messages(window, frames, parts),
                "max_tokens": self.spec.max_new_tokens, "temperature": 0.0}

    def predict(self, window: Window) -> str:
        """One chat completion; raises on transport errors (reported as ``unknown``)."""
        import openai

        request = self._request(window)
        try:
            reply = self.client.chat.completions.create(
                **request, extra_body=self._constraint_body())
        except openai.BadRequestError as exc:
            if self.constraint != "structured_outputs" or "structured_outputs" not in str(exc):
                raise
            self.constraint = "guided_json"  # an older vLLM: remember and ask that way
            reply = self.client.chat.completions.create(
                **request, extra_body=self._constraint_body())
        content = reply.choices[0].message.content
        if content is None:
            raise ValueError("the server returned no message content")
        return content

    def _constraint_body(self) -> dict:
        if self.constraint == "structured_outputs":
            return {"structured_outputs": {"json": MODEL_OUTPUT_SCHEMA}}
        return {"guided_json": MODEL_OUTPUT_SCHEMA}

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self.client.close()
