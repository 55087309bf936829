# shellcheck shell=bash
# Sourced by quickstart.sh and test.sh: which Debian packages the build needs, and how to
# install them. The build of the `larder` binary needs only a C and C++ toolchain and make
# (librdkafka and zlib are compiled from source by their -sys crates, with ./configure and
# make; nothing needs cmake, pkg-config or any -dev package). scripts/check-build-tools.sh
# proves it in CI by building every native dependency with a PATH that holds only Debian's
# essential packages and build-essential.

# Commands the build calls, each with the Debian package that provides it.
LARDER_BUILD_TOOLS=(
  "cc:build-essential"
  "c++:build-essential"
  "make:build-essential"
  "ar:build-essential"
)

# Prints the Debian packages that provide the build tools missing from PATH, one per line,
# each once.
larder_missing_build_packages() {
  local entry tool package
  local -A seen=()
  for entry in "${LARDER_BUILD_TOOLS[@]}"; do
    tool="${entry%%:*}"
    package="${entry#*:}"
    if ! command -v "$tool" >/dev/null 2>&1 && [ -z "${seen[$package]:-}" ]; then
      seen[$package]=1
      echo "$package"
    fi
  done
}

# Installs Debian packages with apt-get (through sudo when not root).
larder_apt_install() {
  [ "$#" -gt 0 ] || return 0
  local sudo=""
  if [ "$(id -u)" != "0" ]; then
    if ! command -v sudo >/dev/null 2>&1; then
      echo "error: installing $* needs root (or sudo): apt-get install $*" >&2
      return 1
    fi
    sudo="sudo"
  fi
  echo "== installing (apt-get): $*"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@"
}

# Installs whatever the build needs and is missing; prints nothing when all is there.
larder_install_build_packages() {
  local missing
  mapfile -t missing < <(larder_missing_build_packages)
  larder_apt_install "${missing[@]}"
}

# Fails with a pointer to rustup when cargo is missing.
larder_require_cargo() {
  if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo is not on PATH. Install the Rust toolchain first: https://rustup.rs" >&2
    echo "       (then: source \"\$HOME/.cargo/env\")" >&2
    return 1
  fi
}
