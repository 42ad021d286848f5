"""Reads usage from a Gemini stream (`alt=sse`) on the side, without changing a byte of it.

Frames are split like any SSE stream (relay_core.protocols.anthropic.sse); each `data:` payload is one
GenerateContentResponse (wrapped in `response` on Code Assist). The last `usageMetadata` wins; a
`finishReason` marks the answer complete; an `error` object (bare or in an array) ends it as failed.
"""

from __future__ import annotations

from typing import Any

from relay_core.protocols.anthropic.sse import SseUsageMeter
from relay_core.protocols.gemini.usage import unwrapped
from relay_core.protocols.gemini.usage import usage_from_metadata


class GeminiStreamMeter(SseUsageMeter):
    plain_delta = None  # Anthropic's delta shape: every Gemini event is read through _on_payload

    def _on_payload(self, payload: Any) -> None:
        if isinstance(payload, list) and payload:  # errors often come wrapped in an array
            payload = payload[0]
        if isinstance(payload, dict):
            self._on_event(payload)

    def _on_event(self, event: dict[str, Any]) -> None:
        if isinstance(event.get("error"), dict):
            self.error = event["error"]
            return
        response = unwrapped(event)
        if response is None:
            return
        usage = usage_from_metadata(response.get("usageMetadata"))
        if usage is not None:
            self.saw_message_start = True
            self.usage = usage
        if isinstance(response.get("modelVersion"), str):
            self.model = response["modelVersion"]
        for candidate in response.get("candidates") or ():
            if not isinstance(candidate, dict):
                continue
            if isinstance(candidate.get("finishReason"), str):
                self.saw_message_delta = True
                self.stop_reason = candidate["finishReason"]
            content = candidate.get("content")
            parts = content.get("parts") if isinstance(content, dict) else None
            for part in parts if isinstance(parts, list) else ():
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    self.output_chars += len(part["text"])
