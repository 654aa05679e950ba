#!/bin/sh
# Install the agent CLIs that tests/test_clitools*.py run for real (Claude Code, Codex,
# Gemini CLI, OpenCode, Qwen Code and Continue's cn), pinned, from the npm registry, into
# one directory (default: .cache/agent-clis of the repository; about 1.2 GB, 45 s the
# first time, a few seconds when they are there). The README's test command runs it;
# tests/conftest.py puts DIR/node_modules/.bin on the tests' PATH. Without npm it says
# so and leaves the tests to skip, each naming the CLI that is missing.
#
#   scripts/agent-clis.sh [DIR]
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-$root/.cache/agent-clis}
if ! command -v npm >/dev/null 2>&1; then
    echo "agent-clis.sh: npm is not installed; the real-CLI tests will be skipped" >&2
    exit 0
fi
mkdir -p "$dir"
npm install --no-audit --no-fund --loglevel=error --prefix "$dir" \
    @anthropic-ai/claude-code@2.1.328 @openai/codex@0.169.0 @google/gemini-cli@0.61.0 \
    opencode-ai@1.18.33 @qwen-code/qwen-code@0.24.4 @continuedev/cli@1.5.47 >/dev/null
echo "agent CLIs in $dir/node_modules/.bin"
