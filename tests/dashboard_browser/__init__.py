"""The dashboard in a real browser: Debian's Chromium driven by Playwright for Python.

Covers signing in, adding a provider (tested first), creating a key (shown once, then
only its prefix), building a combo (with the API's validation message shown beside the
step), a request sent through the gateway then seen in the request log (each attempt
and why it failed) and in the usage chart and its CSV, API errors shown in the page, a
state change without the CSRF token refused, subscription sign-in (device, paste and
loopback flows against fake OAuth servers), the CLI tools page in a temporary home
(configure and restore Claude Code), resilience reset and cache clearing, keyboard
use, the dark theme, and every page at 1280 and 390 px wide (no sideways scrolling).
Each page's screenshot is saved under ``.artifacts/dashboard/`` (``OMNIROUTE_ARTIFACTS``
overrides), at both widths. The ``chromium_path`` fixture (``tests/conftest.py``)
installs Chromium with apt-get when it is missing, or skips these tests saying what is
missing.
"""
