#!/bin/bash
# Download, on the host, the Debian packages of the local stand-in images with everything
# they depend on, so that their builds install them with no network.
#
#   compose/local/fetch-debs.sh OUT_DIR [BASE_IMAGE]
#
# Dependencies are resolved against the dpkg status of BASE_IMAGE (default
# sclake-base:bookworm): only what the base lacks (or holds in an older version) is fetched.
# Without that image the whole dependency closure is fetched; the build then skips what
# the base already has. Files land in OUT_DIR/pool (kept: nothing is downloaded twice) and
# each image's set is listed in OUT_DIR/<image>.list. Uses the host's apt sources and
# lists (run `apt-get update` first on a fresh host); the host's own packages are untouched.
set -euo pipefail

out=${1:?usage: fetch-debs.sh OUT_DIR [BASE_IMAGE]}
base=${2:-sclake-base:bookworm}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out/pool/partial"
out=$(cd "$out" && pwd)

status="$out/base.status"
if docker image inspect "$base" >/dev/null 2>&1; then
    docker run --rm --network none --entrypoint cat "$base" /var/lib/dpkg/status >"$status.new"
    mv "$status.new" "$status"
    echo "fetch-debs: resolving against the packages of $base"
else
    : >"$status"
    echo "fetch-debs: $base not found: fetching the whole dependency closure"
fi

# apt on the host's lists, with the base's package state and our own download folder.
# No locking: this never touches the host's dpkg database.
apt_opts=(
    -o "Dir::State::status=$status"
    -o "Dir::Cache::archives=$out/pool"
    -o "Debug::NoLocking=true"
    -o "APT::Install-Recommends=false"
    -o "APT::Install-Suggests=false"
    -o "APT::Get::Assume-Yes=true"
)

grep -Ev '^\s*(#|$)' "$here/packages.txt" | while read -r image packages; do
    # shellcheck disable=SC2086 # a space-separated package list
    apt-get "${apt_opts[@]}" -qq --download-only install $packages >/dev/null
    # The simulation lists every package to install ("Inst NAME (VERSION SUITE [ARCH])"),
    # also those already downloaded; their files are NAME_VERSION_ARCH.deb (":" as %3a).
    # shellcheck disable=SC2086
    apt-get "${apt_opts[@]}" -qq --simulate install $packages |
        sed -nE 's/^Inst ([^ ]+) (\[[^]]*\] )?\(([^ ]+) .*\[([a-z0-9]+)\].*$/\1_\3_\4.deb/p' |
        sed 's/:/%3a/g' | sort >"$out/$image.list"
    while read -r deb; do
        [ -f "$out/pool/$deb" ] || { echo "fetch-debs: $deb was not downloaded" >&2; exit 1; }
    done <"$out/$image.list"
    echo "fetch-debs: $image: $(wc -l <"$out/$image.list") packages"
done
