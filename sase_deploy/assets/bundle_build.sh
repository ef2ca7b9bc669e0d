#!/usr/bin/env bash
# Builds @ENGINE@ for @TITLE@ (@SM@) with TensorRT @LABEL@.
# Written by sase-deploy @VERSION@.
# Usage: ./build.sh [more trtexec options]. Set TRTEXEC=/path/to/trtexec to pick the binary.
set -euo pipefail
cd "$(dirname "$0")"

TRTEXEC="${TRTEXEC:-$(command -v trtexec || true)}"
if [ -z "$TRTEXEC" ] && [ -x @JETSON_TRTEXEC@ ]; then
  TRTEXEC=@JETSON_TRTEXEC@
fi
if [ -z "$TRTEXEC" ]; then
  echo "build.sh: no trtexec on PATH nor at @JETSON_TRTEXEC@;" \
    "install TensorRT @LABEL@ or set TRTEXEC" >&2
  exit 2
fi

# The options below are TensorRT @LABEL@'s: stop on another version rather than midway.
# trtexec prints "[TensorRT v8502]" (8.x: major*1000+minor*100+patch) or "v100300" (10+).
code="$("$TRTEXEC" --help 2>&1 | grep -o 'TensorRT v[0-9]*' | head -n 1 || true)"
code="${code#TensorRT v}"
if [ -n "$code" ]; then
  if [ "$code" -ge 10000 ]; then
    found="$((code / 10000)).$((code / 100 % 100))"
  else
    found="$((code / 1000)).$((code / 100 % 10))"
  fi
  case "$found" in
    @ACCEPTED@) ;;
    *)
      echo "build.sh: this bundle is for TensorRT @LABEL@ but $TRTEXEC is TensorRT $found;" \
        "bundle again for it, or set SASE_DEPLOY_ANY_TRT=1 to try anyway" >&2
      [ -n "${SASE_DEPLOY_ANY_TRT:-}" ] || exit 3
      ;;
  esac
else
  echo "build.sh: could not read the TensorRT version from trtexec --help; trying anyway" >&2
fi

"$TRTEXEC" \
@ARGS@
  "$@"
echo "build.sh: wrote $(pwd)/@ENGINE@"
