#!/usr/bin/env bash
# Guards README command 1 against a build step that calls a tool a new machine lacks (as
# librdkafka's cmake build once did: cmake and libcurl's headers, on no newcomer's machine).
#
# 1. The set-up's detection (scripts/system-packages.sh) names build-essential when one of
#    its tools is missing from PATH, and nothing when all are there.
# 2. Every dependency of `larder` that builds native code (the packages with a `links` key:
#    librdkafka, zlib, zstd, liblzma, aws-lc, ring; and usearch's C++) builds with a PATH that holds only the
#    commands of Debian's required packages (what a minimal Debian has), of build-essential
#    and of the Rust toolchain: no cmake, no pkg-config, no python, no -dev package's tools.
#    Run by scripts/test.sh; ~2 CPU-minutes, in a temporary target folder.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/system-packages.sh
source scripts/system-packages.sh

work_dir=$(mktemp -d)
trap 'rm -rf "$work_dir"' EXIT

# --- 1. detection ---------------------------------------------------------------------
full_path="$work_dir/full-path"
mkdir "$full_path"
for entry in "${LARDER_BUILD_TOOLS[@]}"; do
  tool="${entry%%:*}"
  ln -s "$(command -v "$tool")" "$full_path/$tool"
done
missing=$(PATH="$full_path" larder_missing_build_packages)
if [ -n "$missing" ]; then
  echo "FAIL: with every build tool on PATH the set-up still wants: $missing" >&2
  exit 1
fi
for entry in "${LARDER_BUILD_TOOLS[@]}"; do
  tool="${entry%%:*}"
  package="${entry#*:}"
  mv "$full_path/$tool" "$work_dir/hidden"
  missing=$(PATH="$full_path" larder_missing_build_packages)
  if [ "$missing" != "$package" ]; then
    echo "FAIL: without '$tool' on PATH the set-up wants '$missing', not '$package'" >&2
    exit 1
  fi
  mv "$work_dir/hidden" "$full_path/$tool"
done
echo "set-up detection: each missing build tool maps to its package"

# --- 2. native builds with a minimal PATH --------------------------------------------
# Installed packages: Debian's required ones, and build-essential with its dependencies.
declare -A packages=()
add_with_dependencies() {
  local package=$1 dependency
  [ -z "${packages[$package]:-}" ] || return 0
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null)" = "installed" ] || return 0
  packages[$package]=1
  for dependency in $(dpkg-query -W -f='${Depends}, ${Pre-Depends}' "$package" \
    | tr ',|' '\n\n' | sed -e 's/(.*)//' -e 's/:any//' -e 's/ //g' | sort -u); do
    add_with_dependencies "$dependency"
  done
}
if [ "$(dpkg-query -W -f='${db:Status-Status}' build-essential 2>/dev/null)" != "installed" ]; then
  larder_apt_install build-essential
fi
add_with_dependencies build-essential
while read -r package priority; do
  [ "$priority" = "required" ] && packages[$package]=1
done < <(dpkg-query -W -f='${Package} ${Priority}\n')

minimal_path="$work_dir/minimal-path"
mkdir "$minimal_path"
for package in "${!packages[@]}"; do
  dpkg-query -L "$package" 2>/dev/null | grep -E '^(/usr)?/s?bin/[^/]+$' || true
done | sort -u >"$work_dir/commands"
while read -r command_path; do
  [ -x "$command_path" ] && ln -sf "$command_path" "$minimal_path/$(basename "$command_path")"
done <"$work_dir/commands"
# Names that Debian's alternatives give to those commands (cc, c++, awk, ...).
for alternative in /etc/alternatives/*; do
  target=$(readlink -f "$alternative")
  name=$(basename "$alternative")
  if grep -qx "$target" "$work_dir/commands" && [ -e "/usr/bin/$name" ]; then
    ln -sf "$target" "$minimal_path/$name"
  fi
done
for forbidden in cmake pkg-config python3 curl; do
  if [ -e "$minimal_path/$forbidden" ]; then
    echo "FAIL: the minimal PATH unexpectedly holds $forbidden" >&2
    exit 1
  fi
done

cargo_bin=$(dirname "$(command -v cargo)")
mapfile -t native_packages < <(cargo metadata --format-version 1 --locked \
  --filter-platform "$(rustc -vV | sed -n 's/^host: //p')" | python3 -c '
import json, sys
metadata = json.load(sys.stdin)
resolved = {node["id"] for node in metadata["resolve"]["nodes"]}
for package in metadata["packages"]:
    linked = package.get("links") and (package["name"].endswith("-sys") or package["name"] == "ring")
    # C++ compiled by build scripts without a links key: usearch (the vector index) and
    # its SIMD kernels.
    native = linked or package["name"] in ("usearch", "numkong")
    if package["id"] in resolved and package["source"] and native:
        print(package["name"] + "@" + package["version"])
')
if [ "${#native_packages[@]}" -eq 0 ]; then
  echo "FAIL: found no native dependency in cargo metadata" >&2
  exit 1
fi
echo "building ${native_packages[*]} with only Debian's required packages, build-essential and rustup on PATH"
build_arguments=()
for package in "${native_packages[@]}"; do build_arguments+=(-p "$package"); done
env -i HOME="$HOME" PATH="$minimal_path:$cargo_bin" \
  ${RUSTUP_HOME:+RUSTUP_HOME="$RUSTUP_HOME"} ${CARGO_HOME:+CARGO_HOME="$CARGO_HOME"} \
  CARGO_TARGET_DIR="$work_dir/target" CARGO_TERM_COLOR=never \
  cargo build --locked --quiet "${build_arguments[@]}"
echo "native dependencies build without cmake, pkg-config, python or curl"
