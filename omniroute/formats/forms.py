"""A multipart form as the gateway read it: text fields and uploaded files.

:func:`omniroute.bodies.read_form` reads one (bounded in size and time); a
format decodes it into its request (``OpenAIAudio.transcription``). Pure data,
so decoding is testable without a server.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Upload:
    """One uploaded file."""

    filename: str
    content_type: str
    data: bytes


@dataclass(slots=True)
class Form:
    """The parts of a ``multipart/form-data`` body, in the order sent."""

    #: text fields by name; a name sent several times (``timestamp_granularities[]``)
    #: has several values
    fields: dict[str, list[str]] = field(default_factory=dict)
    #: file parts by field name (the last one wins when a name is repeated)
    files: dict[str, Upload] = field(default_factory=dict)
    #: bytes of the parts' contents
    size: int = 0

    def text(self, name: str) -> str | None:
        """The field's last value, or None when it was not sent."""
        values = self.fields.get(name)
        return values[-1] if values else None
