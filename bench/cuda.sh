#!/usr/bin/env bash
# The CUDA path for real, on a lent NVIDIA machine that has no network (the device tool).
#
#   bench/cuda.sh build     choose the build (app/machine/engine_build.py), compile llama-cpp-python
#                           from source with it, and check the result
#   bench/cuda.sh measure   roost doctor, fit, run, bench and serve on the GPU, and
#                           roost bench against raw llama-cpp-python (bench/roost_bench.py)
#   bench/cuda.sh gpu_rows  build, then on the synthetic 8B: flash attention on and off
#                           (bench/flash_attention.py), parallel sequences against the queue
#                           (bench/parallel_sequences.py), and roost fit and bench: one call
#                           of under ten minutes, for a lease with time for one
#
# What it reads, because nothing can be fetched there:
#   .whl/*.whl                      roost's pure-Python needs the machine lacks
#   .gpu/llama_cpp_python.tar.xz    the llama-cpp-python sdist (docs and vocab tests cut, to travel)
#   .gpu/tok.gguf                   SmolLM2's tokenizer alone, for the synthetic 8B model
#   .gpu/smol.part00, .part01       the demo GGUF in two halves (a call carries 64 MiB)
# Results and logs go to $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/roost-cuda}
mkdir -p "$OUT" .gpu
export PYTHONUNBUFFERED=1 ROOST_DATA_DIR=$PWD/.gpu/data

setup() {
    python3 -c "import roost, gguf, platformdirs" 2>/dev/null && return
    python3 -m pip install -q --no-index --no-deps .whl/*.whl
    python3 -m pip install -q --no-deps --no-build-isolation -e .
}

build() {
    nvidia-smi
    nvcc --version | tail -2
    setup
    python3 app/machine/engine_build.py
    python3 app/machine/engine_build.py --json >"$OUT/engine_build.json"
    eval "$(python3 app/machine/engine_build.py --shell)"
    export CMAKE_ARGS CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)
    rm -rf .gpu/src .gpu/wheel && mkdir -p .gpu/src
    tar xJf .gpu/llama_cpp_python.tar.xz -C .gpu/src --strip-components=1  # an sdist: one folder at the top
    local start=$SECONDS
    if ! python3 -m pip wheel -v --no-build-isolation --no-deps -w .gpu/wheel .gpu/src >"$OUT/compile.log" 2>&1; then
        tail -40 "$OUT/compile.log"
        echo "build failed after $((SECONDS - start)) s"
        return 1
    fi
    echo "llama-cpp-python built with CMAKE_ARGS='$CMAKE_ARGS' in $((SECONDS - start)) s"
    ls -la .gpu/wheel
    python3 -m pip install -q --no-deps --force-reinstall .gpu/wheel/*.whl
    python3 app/machine/engine_build.py --check
    # The wheel comes back in pieces under the 16 MiB a file may have, for a later machine.
    split -b 15M -d .gpu/wheel/*.whl "$OUT/wheel.part"
}

measure() {
    setup
    python3 -c "import llama_cpp" 2>/dev/null || python3 -m pip install -q --no-deps .gpu/wheel/*.whl
    python3 app/machine/engine_build.py --check || return 1
    # A call carries 64 MiB and the demo GGUF is 98, so its halves come in two calls:
    # what a call carries is gone at the next, so they are kept outside the tree.
    mkdir -p /tmp/keep && cp -n .gpu/tok.gguf .gpu/smol.part0* /tmp/keep/ 2>/dev/null
    local smol=/tmp/keep/SmolLM2-135M-Instruct.Q4_1.gguf big=/tmp/keep/synthetic-llama3-8b-shape.Q4_0.gguf
    [ -s $smol ] || { [ -s /tmp/keep/smol.part01 ] && [ -s /tmp/keep/smol.part00 ] && cat /tmp/keep/smol.part0? >$smol; }
    synthetic_8b $big
    ls -la /tmp/keep
    if [ -s $smol ]; then small_model $smol; else big_model $big; fi
}

synthetic_8b() {
    # Llama 3 8B's shape (32 layers, 4096 wide, 8 KV heads, FFN 14336) with random weights
    # and SmolLM2's vocabulary: it runs as fast as the real one and talks nonsense.
    [ -s $1 ] || python3 -c "
import sys; sys.path.insert(0, 'tests')
from gguf_files import synthetic_llama
synthetic_llama('/tmp/keep/tok.gguf', '$1', n_layer=32, n_embd=4096, n_head=32, n_head_kv=8, n_ff=14336, n_ctx=32768, qtype='Q4_0')"
}

gpu_rows() {
    local big=/tmp/keep/synthetic-llama3-8b-shape.Q4_0.gguf
    mkdir -p /tmp/keep && cp -n .gpu/tok.gguf /tmp/keep/
    setup
    synthetic_8b $big >"$OUT/synthetic.log" 2>&1 &  # written while llama.cpp compiles
    local writing=$!
    build || return 1
    rm -f "$OUT"/wheel.part*  # no later call to carry it to
    wait $writing
    ls -la $big
    set -x
    timeout 150 python3 bench/flash_attention.py --model $big --depth 0 8192 -p 512 -n 64 -r 2 --gpu-layers -1
    timeout 120 python3 bench/parallel_sequences.py --model $big --gpu-layers -1 --tokens 64 --repeat 2 --clients 1 2 4 8
    roost fit $big
    timeout 60 roost bench $big -p 512 -n 128 -r 3
    set +x
}

small_model() {
    set -x
    roost fit $1
    roost run $1 "What is the capital of France? One word." -t 0 -n 16 --stats
    roost run $1 "What is the capital of Japan?" -t 0 --json
    roost bench $1 -p 512 -n 128 -r 5
    python3 bench/roost_bench.py --model $1 --repeat 3
    roost bench --history
    set +x
}

big_model() {
    local big=$1
    set -x
    roost doctor
    roost doctor --json >"$OUT/doctor.json"
    roost fit $big
    roost run $big "Hello" -t 0 -n 128 --stats
    roost bench $big -p 512 -n 128 -r 5
    python3 bench/roost_bench.py --model $big --repeat 3
    roost bench $big -p 512 -n 128 -r 3 --gpu-layers 16
    roost serve $big --port 8088 --name big >"$OUT/serve.log" 2>&1 &
    for _ in $(seq 60); do curl -sf http://127.0.0.1:8088/health >/dev/null && break; sleep 1; done
    roost run --remote http://127.0.0.1:8088 "Hello" -t 0 -n 128 --stats
    roost bench --remote http://127.0.0.1:8088 -p 512 -n 128 -r 3
    kill $!
    set +x
}

"$@" 2>&1 | tee "$OUT/$1.log"
