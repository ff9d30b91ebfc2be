#!/usr/bin/env bash
# Installs libonnxruntime for deltann's `ort` engine from PyPI's `onnxruntime` wheel.
#
# ort's own build-time download comes from a CDN that is often unreachable; the PyPI wheel carries
# the same shared library (it needs only libc and libstdc++). Each version goes to
#   ${DELTANN_HOME:-${XDG_CACHE_HOME:-~/.cache}/deltann}/onnxruntime/VERSION/libonnxruntime.so.VERSION
# where deltann finds it by version (`ort_library = ["1.32.0"]`) or as the default (newest).
#
# Usage: scripts/fetch-onnxruntime.sh [VERSION...]      (default: 1.32.0)
# Needs python3 with pip. Safe to rerun: installed versions are skipped.
set -euo pipefail

versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(1.32.0)

home="${DELTANN_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/deltann}"
case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) platform=manylinux_2_28_x86_64 ;;
  Linux-aarch64) platform=manylinux_2_28_aarch64 ;;
  *) echo "fetch-onnxruntime: no recipe for $(uname -s)-$(uname -m); install libonnxruntime yourself and set DELTANN_ORT_LIBRARY" >&2; exit 2 ;;
esac

for version in "${versions[@]}"; do
  dest="$home/onnxruntime/$version"
  lib="$dest/libonnxruntime.so.$version"
  if [ -f "$lib" ]; then
    echo "onnxruntime $version: $lib"
    continue
  fi
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  echo "onnxruntime $version: downloading the PyPI wheel ($platform)..." >&2
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --platform "$platform" --python-version 3.11 --implementation cp \
    -d "$tmp" "onnxruntime==$version"
  wheel="$(ls "$tmp"/onnxruntime-*.whl)"
  mkdir -p "$dest"
  python3 - "$wheel" "$dest" "$version" <<'PY'
import sys, zipfile, pathlib
wheel, dest, version = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.startswith("onnxruntime/capi/libonnxruntime.so")]
    if not names:
        sys.exit(f"{wheel}: no onnxruntime/capi/libonnxruntime.so* inside")
    for n in names:
        target = dest / pathlib.Path(n).name
        tmp = target.with_suffix(target.suffix + ".part")
        tmp.write_bytes(z.read(n))
        tmp.rename(target)
    want = dest / f"libonnxruntime.so.{version}"
    if not want.exists():
        sys.exit(f"{wheel}: expected {want.name}, found {[pathlib.Path(n).name for n in names]}")
PY
  rm -rf "$tmp"
  trap - EXIT
  echo "onnxruntime $version: $lib"
done
