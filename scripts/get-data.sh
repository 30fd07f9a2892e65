#!/usr/bin/env bash
# Fetches the data sets that Debian does not install as files of their own.
#   scripts/get-data.sh    the 8x8 digits (digits.csv.gz, 1797 images) into
#                          ${XDG_DATA_HOME:-~/.local/share}/tapegrad/, where nn::data::find_digits looks
# The digits come from Debian's python3-sklearn package: only its .deb is downloaded (no root, except
# to refresh missing package lists; none of scikit-learn's dependencies) and the one file is taken
# out of it and checked by its SHA-256. An installed python3-sklearn's copy is used when present.
# Idempotent: a present, intact file is kept; a damaged one is replaced.
set -euo pipefail

if [[ -z "${XDG_DATA_HOME:-}" && -z "${HOME:-}" ]]; then
  echo "get-data: neither XDG_DATA_HOME nor HOME is set: no place for the data" >&2
  exit 1
fi
target_dir="${XDG_DATA_HOME:-$HOME/.local/share}/tapegrad"
target="$target_dir/digits.csv.gz"
member=./usr/lib/python3/dist-packages/sklearn/datasets/data/digits.csv.gz
sha256=46abec6b12486ad9e51943373abcf22bbea1b5a51a1619b361570d8893f1464a

if [[ -f "$target" ]] && echo "$sha256  $target" | sha256sum --check --status; then
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
install_target() {  # atomically: a reader never sees a half-written file
  mkdir -p "$target_dir"
  cp "$1" "$target.tmp.$$"
  mv -f "$target.tmp.$$" "$target"
  echo "get-data: wrote $target" >&2
}
system_copy=/usr/lib/python3/dist-packages/sklearn/datasets/data/digits.csv.gz
if [[ -f "$system_copy" ]] && echo "$sha256  $system_copy" | sha256sum --check --status; then
  install_target "$system_copy"  # python3-sklearn is installed: no download
  exit 0
fi
echo "get-data: downloading python3-sklearn's .deb for the digits data" >&2
# apt's download sandbox user cannot write into a root-owned mktemp folder; the download itself is
# checked by apt against the signed package lists.
download() { (cd "$work" && chmod 755 . && apt-get download -qq python3-sklearn 2>"$work/apt.log"); }
if ! download; then
  # Package lists may be missing on a fresh machine: refresh them once (as root) and retry.
  sudo_cmd=()
  [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null && sudo_cmd=(sudo)
  if [[ $(id -u) -eq 0 || ${#sudo_cmd[@]} -gt 0 ]]; then
    "${sudo_cmd[@]}" apt-get update -qq || true
  fi
  download || {
    cat "$work/apt.log" >&2
    echo "get-data: 'apt-get download python3-sklearn' failed" >&2
    exit 1
  }
fi
dpkg-deb --fsys-tarfile "$work"/python3-sklearn_*.deb | tar -xO "$member" >"$work/digits.csv.gz"
if ! echo "$sha256  $work/digits.csv.gz" | sha256sum --check --status; then
  echo "get-data: digits.csv.gz from python3-sklearn does not have the expected SHA-256 $sha256" >&2
  exit 1
fi
install_target "$work/digits.csv.gz"
