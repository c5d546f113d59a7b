#!/usr/bin/env bash
# XMedGPT Workstation — user-level installer for the Linux bundle (no root needed).
#
#   ./install.sh [--prefix DIR] [--no-desktop]      install or upgrade
#   ./install.sh --uninstall [--purge] [--prefix DIR]  remove the program; --purge also deletes
#                                                      the workspace (drafts) and the audit log
#
# Default prefix: ~/.local/opt/xmedgpt. The command goes to ~/.local/bin/xmedgpt, the menu entry
# to ~/.local/share/applications. Settings, drafts and the audit log live in the XDG folders
# (~/.config/xmedgpt, ~/.local/share/xmedgpt) and survive upgrades and uninstalls.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
PREFIX="${HOME}/.local/opt/xmedgpt"
BIN_DIR="${HOME}/.local/bin"
APPS_DIR="${XDG_DATA_HOME:-$HOME/.local/share}/applications"
ICON_DIR="${XDG_DATA_HOME:-$HOME/.local/share}/icons/hicolor/256x256/apps"
DATA_DIR="${XDG_DATA_HOME:-$HOME/.local/share}/xmedgpt"
MODE=install DESKTOP=1 PURGE=0

while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX="$2"; shift 2 ;;
    --prefix=*) PREFIX="${1#--prefix=}"; shift ;;
    --bin-dir) BIN_DIR="$2"; shift 2 ;;
    --no-desktop) DESKTOP=0; shift ;;
    --uninstall) MODE=uninstall; shift ;;
    --purge) PURGE=1; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

say() { printf '%s\n' "$*"; }

detect_gpu() {
  # Prints what was found and sets GPU_CUDA (e.g. 12.4) when an NVIDIA driver answers.
  GPU_CUDA=""
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    local gpu driver
    gpu=$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -n1)
    driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -n1)
    GPU_CUDA=$(nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9.]*\).*/\1/p' | head -n1)
    say "Found NVIDIA GPU: $gpu; driver $driver; supports CUDA up to ${GPU_CUDA:-unknown}."
  else
    say "No NVIDIA driver found (nvidia-smi missing or not answering): the assistant will run on the CPU."
  fi
}

choose_variant() {
  # The tarball may carry several builds (xmedgpt = this one; xmedgpt-cuda* = CUDA builds).
  VARIANT_DIR="$HERE/xmedgpt"
  local built; built=$(sed -n 's/^torch_variant=//p' "$HERE/BUILD_INFO" 2>/dev/null || echo cpu)
  for d in "$HERE"/xmedgpt-cuda*; do
    [ -d "$d" ] || continue
    local need; need=$(basename "$d" | sed 's/xmedgpt-cuda//')     # e.g. 121 -> 12.1
    need="${need:0:2}.${need:2}"
    if [ -n "$GPU_CUDA" ] && [ "$(printf '%s\n%s\n' "$need" "$GPU_CUDA" | sort -V | head -n1)" = "$need" ]; then
      VARIANT_DIR="$d"; built="cuda$need"
    fi
  done
  say "Installing the ${built} build of PyTorch inside the bundle."
  if [ -n "$GPU_CUDA" ] && [ "$built" = cpu ]; then
    say "Note: this bundle has no CUDA build; ask for the CUDA bundle to use the GPU (4-bit XMedGPT-8B needs it)."
  fi
}

verify_manifest() {
  [ -f "$HERE/MANIFEST.sha256" ] || { say "No MANIFEST.sha256: cannot verify the bundle." >&2; exit 1; }
  say "Verifying the bundle's files..."
  (cd "$HERE" && sha256sum --quiet -c MANIFEST.sha256) || { say "The bundle is damaged (checksum mismatch); download it again." >&2; exit 1; }
}

install() {
  detect_gpu
  choose_variant
  [ "$VARIANT_DIR" = "$HERE/xmedgpt" ] && verify_manifest
  local version; version=$(sed -n 's/^version=//p' "$HERE/BUILD_INFO" 2>/dev/null || echo unknown)
  local target="$PREFIX/xmedgpt-$version"
  mkdir -p "$PREFIX" "$BIN_DIR"
  rm -rf "$target.partial"
  cp -a "$VARIANT_DIR" "$target.partial"
  cp "$HERE/BUILD_INFO" "$target.partial/" 2>/dev/null || true
  rm -rf "$target" && mv "$target.partial" "$target"
  ln -sfn "$target" "$PREFIX/current"
  ln -sfn "$PREFIX/current/xmedgpt" "$BIN_DIR/xmedgpt"
  if [ "$DESKTOP" = 1 ]; then
    mkdir -p "$APPS_DIR" "$ICON_DIR"
    cp "$HERE/xmedgpt.png" "$ICON_DIR/xmedgpt.png"
    sed -e "s#@BIN@#$PREFIX/current/xmedgpt#" -e "s#@ICON@#$ICON_DIR/xmedgpt.png#" \
      "$HERE/xmedgpt.desktop" > "$APPS_DIR/xmedgpt.desktop"
    command -v update-desktop-database >/dev/null 2>&1 && update-desktop-database "$APPS_DIR" >/dev/null 2>&1 || true
  fi
  say "Installed XMedGPT Workstation $version in $target"
  say "Command: $BIN_DIR/xmedgpt   (run 'xmedgpt doctor' to check GPU, audio, codecs and models)"
  case ":$PATH:" in *":$BIN_DIR:"*) ;; *) say "Add $BIN_DIR to PATH to run 'xmedgpt' by name." ;; esac
}

uninstall() {
  rm -f "$BIN_DIR/xmedgpt" "$APPS_DIR/xmedgpt.desktop" "$ICON_DIR/xmedgpt.png"
  rm -rf "$PREFIX"/xmedgpt-* "$PREFIX/current"
  rmdir "$PREFIX" 2>/dev/null || true
  say "Removed the program from $PREFIX."
  if [ "$PURGE" = 1 ]; then
    rm -rf "$DATA_DIR" "${XDG_CONFIG_HOME:-$HOME/.config}/xmedgpt"
    say "Deleted the workspace, audit log and settings ($DATA_DIR)."
  else
    say "Kept drafts, the audit log and settings in $DATA_DIR (use --purge to delete them)."
  fi
}

if [ "$MODE" = uninstall ]; then uninstall; else install; fi
