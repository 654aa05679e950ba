"""Claude Pro/Max subscriptions end to end: sign-in by the CLI and by the API, import
from Claude Code's file, the ``claude-code`` provider's requests (bearer token, OAuth
beta, the Claude Code system line, pass-through with ``cache_control`` intact), renewal,
"needs sign-in", and no secret in logs or answers.

Everything runs against a fake authorization server (Claude's endpoints, JSON bodies,
``CODE#STATE`` page) and a fake Messages API that refuses what the real one refuses on
a subscription token (``fakes.claude_code_upstream``).
"""
