#!/usr/bin/env bash
# Builds two real OpenAI-compatible servers and a tiny random-weight model for the opt-in suite
# tests/llm_server/test_real_server.py (README "Against a real LLM server"). Not run by CI.
#
#   bash tests/llm_server/build_llama_server.sh [DIR]        (default DIR: /tmp/omost-llm-server)
#
# Needs Python 3, cmake, a C/C++ compiler and ninja (Debian: cmake g++ ninja-build) and the package registry;
# no model download. On 2 cores each server takes 20-50 minutes to build. It makes, in DIR:
#   venv/                 llama-cpp-python[server] built from its PyPI source (it compiles llama.cpp),
#                         plus gguf and tokenizers
#   llama.cpp-build/bin/llama-server   llama.cpp's own server, built from the llama.cpp source vendored in
#                         that same llama-cpp-python release (so both servers run the same llama.cpp)
#   tiny.gguf             the tiny random Llama (write_tiny_gguf.py)
# and prints how to start each server and run the suite.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
DIR="${1:-/tmp/omost-llm-server}"
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
JOBS="${JOBS:-$(nproc)}"
mkdir -p "$DIR"
cd "$DIR"

[ -x venv/bin/python ] || python3 -m venv venv
venv/bin/python -m pip install -q --disable-pip-version-check gguf tokenizers numpy

if ! venv/bin/python -c "import llama_cpp" 2>/dev/null; then
  venv/bin/python -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
    "llama-cpp-python==$VERSION" -d sdist
  # CPU build without the multimodal (llava/mtmd) library, which the server does not need here
  CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
  CMAKE_BUILD_PARALLEL_LEVEL="$JOBS" \
    venv/bin/python -m pip install -q --disable-pip-version-check "$(ls sdist/llama_cpp_python-*.tar.gz)[server]"
fi

if [ ! -x llama.cpp-build/bin/llama-server ]; then
  [ -d src ] || { mkdir src && tar xzf sdist/llama_cpp_python-*.tar.gz -C src --strip-components 1; }
  # no web UI: it would be built with npm or downloaded; the API is all that is tested
  cmake -S src/vendor/llama.cpp -B llama.cpp-build -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF >/dev/null
  cmake --build llama.cpp-build --target llama-server -j "$JOBS"
fi

venv/bin/python "$HERE/write_tiny_gguf.py" tiny.gguf --context 4096

cat <<EOF

Built in $DIR. Start one server, then run the suite from the repository folder:
  $DIR/llama.cpp-build/bin/llama-server -m $DIR/tiny.gguf --host 127.0.0.1 --port 8080 -c 4096 -np 1
  $DIR/venv/bin/python -m llama_cpp.server --model $DIR/tiny.gguf --host 127.0.0.1 --port 8081 --n_ctx 4096
  OMOST_LLM_SERVER_URL=http://127.0.0.1:8080/v1 .venv/bin/python -m pytest -v tests/llm_server
EOF
