"""One module per client SDK, each with the same async functions over a :class:`Cell`.

``text``, ``stream_text``, ``tool_round_trip``, ``image``, ``reasoning``, ``error``
and ``stream_error``; ``CARRIES_OPAQUE`` says whether the client format can hand
opaque reasoning (signatures, encrypted content) back on the next turn.
"""
