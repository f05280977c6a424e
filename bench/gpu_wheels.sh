#!/usr/bin/env bash
# Download, here, the wheels bench/gpu.sh installs on a fresh GPU machine (Python 3.12,
# x86-64): what voxtrio and voxcpm import that the device image lacks (its own torch,
# numpy, scipy, numba, transformers, ... are used as they are). Writes .whl/ (ignored).
#   bash bench/gpu_wheels.sh      then carry [".whl"] in the device run of bench/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >>"$(git rev-parse --git-common-dir)/info/exclude"
mkdir -p .whl
PY=${PY:-python3}
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64
  --platform manylinux_2_24_x86_64 --platform manylinux_2_34_x86_64)
PACKAGES=(  # the versions the CPU test environment runs
  trio==0.35.0 trio-websocket==0.12.2 wsproto==1.3.2 outcome==1.3.0.post0 sniffio==1.3.1
  cattrs==26.2.1 structlog==26.1.0 av==18.1.0 soxr==1.1.0 defusedxml==0.7.1
  voxcpm==2.0.3 librosa==0.11.0 audioread==3.1.0 decorator==5.3.1 pooch==1.9.0
  platformdirs==4.14.9 soundfile==0.14.0 cffi==2.1.1 pycparser==3.12
  inflect==7.6.0 more-itertools==11.2.1 typeguard==4.6.1 jaraco.functools==4.6.0
  wetext==0.1.8 kaldifst==1.8.3 contractions==0.1.73 textsearch==0.0.24 anyascii==0.3.3
  pyahocorasick==2.3.1 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0
  typing-inspection==0.4.5
  h11==0.16.0 attrs==26.1.0 prometheus-client==0.26.0 typing-extensions==4.16.0  # newer than the image may hold
)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${PLATFORMS[@]}" -d .whl "${PACKAGES[@]}"
du -sh .whl
