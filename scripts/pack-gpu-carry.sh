#!/usr/bin/env bash
# Packs what a GPU machine without Node.js needs into .gpu-carry/ (gitignored),
# for scripts/gpu-bench.sh: an xz copy of this machine's node binary (official
# builds link only glibc) and the runtime node_modules (no build-time or dev
# packages). With build/Release (the addon and libtdq_cuda.so) and dist/ it
# must stay under the device tool's 64 MiB carry limit; the sizes are printed.
#
#   scripts/pack-gpu-carry.sh        # then: npm run build:native && npx tsc -p tsconfig.json
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
C="$ROOT/.gpu-carry"
mkdir -p "$C"
NODE=$(readlink -f "$(command -v node)")
if [ ! -f "$C/node.xz" ] || [ "$NODE" -nt "$C/node.xz" ]; then
  echo "pack: xz $NODE (a few minutes)"
  xz -T0 -9 -c "$NODE" > "$C/node.xz.tmp" && mv "$C/node.xz.tmp" "$C/node.xz"
fi
node --version > "$C/node.version"
# Runtime packages only: what dist/src requires at run time (cmake-js and
# node-addon-api build the addon, which travels built).
cd "$ROOT"
PKGS=$(npm ls --omit=dev --parseable --all 2>/dev/null | sed "s#^$ROOT/##" | grep '^node_modules/' |
  grep -v -E '^node_modules/(cmake-js|node-addon-api|node-api-headers|tar|fs-extra|rc|debug|ms|semver|url-join|which|isexe|graceful-fs|jsonfile|universalify|deep-extend|ini|minimist|strip-json-comments|@isaacs/fs-minipass|chownr|minipass|minizlib|yallist)$' | sort -u)
tar -cJf "$C/node_modules.tar.xz" $PKGS
echo "pack: sizes (the carry limit is 64 MiB in all):"
du -sh "$C/node.xz" "$C/node_modules.tar.xz" build/Release dist 2>/dev/null
du -sc "$C" build/Release dist | tail -1 | awk '{printf "pack: total %.1f MiB\n", $1 / 1024}'
