#!/usr/bin/env bash
# Build the Linux one-folder bundle and its tarball: `make installer`.
# Output: build/installer/xmedgpt-<version>-linux-<arch>.tar.gz (size printed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
VERSION=$($PY -c "import importlib.metadata as m; print(m.version('xmedgpt-workstation'))")
ARCH=$(uname -m)
TORCH_VARIANT=$($PY -c "import torch; print('cuda' + torch.version.cuda.replace('.', '') if torch.version.cuda else 'cpu')")
NAME="xmedgpt-${VERSION}-linux-${ARCH}-${TORCH_VARIANT}"
OUT=build/installer
STAGE="$OUT/$NAME"

$PY -m PyInstaller --noconfirm --log-level WARN --distpath build/pyi-dist --workpath build/pyi-work installer/xmedgpt.spec
rm -rf "$STAGE" && mkdir -p "$STAGE"
cp -a build/pyi-dist/xmedgpt "$STAGE/xmedgpt"
cp installer/install.sh installer/xmedgpt.desktop installer/xmedgpt.png "$STAGE/"
chmod +x "$STAGE/install.sh"
cat > "$STAGE/BUILD_INFO" <<INFO
version=$VERSION
arch=$ARCH
torch=$($PY -c "import torch; print(torch.__version__)")
torch_variant=$TORCH_VARIANT
built=$(date -u +%Y-%m-%dT%H:%M:%SZ)
INFO
(cd "$STAGE" && find xmedgpt -type f -print0 | sort -z | xargs -0 sha256sum > MANIFEST.sha256)
tar -C "$OUT" -czf "$OUT/$NAME.tar.gz" "$NAME"
echo "bundle folder: $(du -sh "$STAGE/xmedgpt" | cut -f1)  tarball: $(du -sh "$OUT/$NAME.tar.gz" | cut -f1)  -> $OUT/$NAME.tar.gz"
