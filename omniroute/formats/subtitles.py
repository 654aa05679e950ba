"""Subtitles: SubRip (``.srt``) and WebVTT (``.vtt``) from timed segments, and back.

A transcript that an upstream gave as words (Deepgram) is cut into cues by
:func:`segments_from_words`: a cue ends at a sentence's end, at a pause, or
when it grows too long to read at once.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from omniroute.formats.audio import Segment, Word

#: a cue longer than this many characters ends at the next word
CUE_CHARS = 84
#: a pause this long (seconds) between two words ends a cue
CUE_PAUSE = 1.0
_SENTENCE_END = (".", "?", "!", "…")
_TIMESTAMP = re.compile(rb"(?:(\d+):)?(\d{2}):(\d{2})[.,](\d{3})")


def timestamp(seconds: float, decimal: str) -> str:
    """``HH:MM:SS,mmm`` (SubRip: ``decimal=","``) or ``HH:MM:SS.mmm`` (WebVTT)."""
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def srt(segments: Sequence[Segment]) -> str:
    """SubRip: numbered cues, ``start --> end`` with comma decimals, a blank line after each."""
    return "".join(f"{i}\n{timestamp(s.start, ',')} --> {timestamp(s.end, ',')}\n"
                   f"{s.text.strip()}\n\n" for i, s in enumerate(segments, 1))


def vtt(segments: Sequence[Segment]) -> str:
    """WebVTT: the ``WEBVTT`` header, then cues with dot decimals."""
    cues = "".join(f"{timestamp(s.start, '.')} --> {timestamp(s.end, '.')}\n{s.text.strip()}\n\n"
                   for s in segments)
    return "WEBVTT\n\n" + cues


def segments_from_words(words: Sequence[Word]) -> list[Segment]:
    """Cues from timed words: each ends after a sentence's last word, before a pause of
    :data:`CUE_PAUSE` seconds, or once it passes :data:`CUE_CHARS` characters."""
    segments: list[Segment] = []
    cue: list[Word] = []

    def close() -> None:
        if cue:
            segments.append(Segment(" ".join(w.text for w in cue), cue[0].start, cue[-1].end))
            cue.clear()

    for word in words:
        if cue and (word.start - cue[-1].end >= CUE_PAUSE
                    or sum(len(w.text) + 1 for w in cue) >= CUE_CHARS):
            close()
        cue.append(word)
        if word.text.endswith(_SENTENCE_END):
            close()
    close()
    return segments


def last_end(body: bytes) -> float | None:
    """The end of the last cue of a SubRip or WebVTT body (seconds), or None."""
    ends = [line.split(b"-->", 1)[1] for line in body.splitlines() if b"-->" in line]
    match = _TIMESTAMP.search(ends[-1]) if ends else None
    if match is None:
        return None
    hours, minutes, secs, millis = (int(g or 0) for g in match.groups())
    return hours * 3600 + minutes * 60 + secs + millis / 1000
