"""Reading what the user pastes back: ``code#state``, a redirected URL, or a bare code.

Claude's callback page shows ``CODE#STATE``; a loopback flow whose redirect could
not reach this machine leaves the browser on ``http://localhost:PORT/...?code=...&
state=...``, which the user copies instead (the paste fallback).
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from omniroute.oauth.errors import AccessDenied, OAuthError


def parse_pasted(text: str) -> tuple[str, str | None]:
    """The authorization code and the state (None when the paste has none).

    :raises AccessDenied: a pasted redirect says the user refused.
    :raises OAuthError: nothing that looks like a code was pasted (status 400).
    """
    text = text.strip()
    if "://" in text or text.startswith("?"):
        parts = urlsplit(text)
        query = parse_qs(parts.query) or parse_qs(parts.fragment)
        if "error" in query:
            raise AccessDenied(f"the authorization was refused: {query['error'][0]}",
                               error=query["error"][0])
        code = (query.get("code") or [""])[0].strip()
        state: str | None = (query.get("state") or [""])[0] or None
    else:
        code, _, rest = text.partition("#")
        code, state = code.strip(), rest.strip() or None
    if not code or any(ch.isspace() for ch in code):
        raise OAuthError("paste the authorization code the page showed (CODE#STATE), or "
                         "the whole address the browser was sent to", status=400,
                         code="invalid_code")
    return code, state
