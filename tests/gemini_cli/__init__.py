"""Provider type ``gemini-cli`` and sign-in ``gemini``: gemini-cli's Google sign-in (loopback
on any free port, the pasted fallbacks), the Code Assist project setup with its polled
operation, imports of ``~/.gemini/oauth_creds.json``, renewals, the daily quota, and the
official SDKs through the gateway. Everything runs against the fakes of
``fakes.code_assist_upstream`` (127.0.0.1 only)."""
