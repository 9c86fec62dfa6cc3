#!/usr/bin/env bash
# Run the tests against the newest releases of every dependency, ignoring constraints.txt and the upper
# bounds of pyproject.toml, in a separate venv (.venv-newest). A failure here is news about a release,
# not a broken main: fix the code (or the bound), then regenerate constraints.txt:
#   pip freeze --exclude-editable | sed 's/+cpu$//' > constraints.txt   (keep its two comment lines)
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-newest
. .venv-newest/bin/activate
# torch stays at the tested release unless TORCH is set (e.g. TORCH=torch for the newest; on a machine
# without a CUDA GPU add --index-url https://download.pytorch.org/whl/cpu to get the CPU build)
pip install -q "${TORCH:-torch==2.13.0}"
names=$(python3 - <<'PY'
import re, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
deps = project["dependencies"] + [d for k, v in project["optional-dependencies"].items() for d in v
                                  if not d.startswith("tokencodec")]
print(" ".join(sorted({re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0] for d in deps} - {"torch"})))
PY
)
pip install -q --upgrade $names
pip install -q --no-deps -e .
python -m pytest "$@"
