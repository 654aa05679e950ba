"""What a model makes, told from its name: ``"chat"``, ``"embedding"``, ``"image"``,
``"transcription"`` (speech to text) or ``"speech"`` (text to speech).

The model lists of most upstreams (OpenAI's ``/models``, OpenRouter's, a local
server's) mix every kind of model and say nothing of their kind, so
``GET /v1/models`` types them by name here; a provider type that knows better
says so (:meth:`omniroute.providers.base.Provider.model_type`: Gemini reads the
methods each model supports, a type that makes only images types every model
``"image"``), and an operator can name any model's type with the connection's
``model_types`` setting (``{"my-sdxl-finetune": "image"}``).
"""

from __future__ import annotations

import re

#: every model type, in the order lists are filtered by (``?type=``)
MODEL_TYPES = ("chat", "embedding", "image", "transcription", "speech")

_IMAGE = re.compile(
    r"dall-e|gpt-image|chatgpt-image|imagen|flux|stable-diffusion|sdxl|(?:^|[/-])sd3"
    r"|-image(?:-|$)|seedream|ideogram|recraft|hidream|playground-v", re.IGNORECASE)
_EMBEDDING = re.compile(r"embed|(?:^|[/-])bge-|(?:^|[/-])(?:e5|gte)-", re.IGNORECASE)
_TRANSCRIPTION = re.compile(r"whisper|transcribe|(?:^|[/-])nova-[23]|voxtral", re.IGNORECASE)
_SPEECH = re.compile(r"(?:^|[/-])tts(?:-|$)|-tts(?:-|$)|orpheus|(?:^|[/-])aura-",
                     re.IGNORECASE)


def guess_model_type(model: str) -> str:
    """The type a model's name suggests; ``"chat"`` when it suggests none."""
    if _IMAGE.search(model):
        return "image"
    if _EMBEDDING.search(model):
        return "embedding"
    if _TRANSCRIPTION.search(model):
        return "transcription"
    if _SPEECH.search(model):
        return "speech"
    return "chat"
