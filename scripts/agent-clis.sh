#!/bin/sh
# Install the agent CLIs that tests/test_clitools*.py run for real when they are on PATH
# (they are skipped otherwise): Claude Code, Codex, Gemini CLI, OpenCode, Qwen Code and
# Continue's cn, pinned, from the npm registry, into one directory (about 1.2 GB).
#
#   sh scripts/agent-clis.sh /tmp/agent-clis
#   PATH=/tmp/agent-clis/node_modules/.bin:$PATH .venv/bin/python -m pytest tests/test_clitools*.py
set -eu
dir=${1:?usage: agent-clis.sh DIR}
mkdir -p "$dir"
npm install --no-audit --no-fund --prefix "$dir" \
    @anthropic-ai/claude-code@2.1.328 @openai/codex@0.169.0 @google/gemini-cli@0.61.0 \
    opencode-ai@1.18.33 @qwen-code/qwen-code@0.24.4 @continuedev/cli@1.5.47
echo "PATH=$dir/node_modules/.bin:\$PATH"
