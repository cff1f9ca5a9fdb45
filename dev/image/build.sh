#!/usr/bin/env bash
# Build spangate's container image with buildah: `make image` and tests/image run this script.
#
#   dev/image/build.sh            prints the image's name (localhost/spangate:VERSION) last
#
# Environment:
#   BASE_IMAGE   the base to build on, pulled by buildah as usual (on a machine that reaches a
#                registry: docker.io/library/python:3.11-slim-bookworm). Empty (the default): a base made here from
#                Debian's packages with debootstrap, localhost/spangate-base:bookworm, made once
#                and kept in buildah's storage (made again only when its recipe below changes).
#   PYTHON       the host's Python 3.11 (for pip download and reading pyproject.toml)
#   IMAGE        the name to tag (default localhost/spangate)
#   DEBIAN_MIRROR  the Debian mirror for debootstrap (default: the one apt uses on this host)
#
# buildah runs as root with chroot isolation and vfs storage (BUILDAH_ISOLATION, STORAGE_DRIVER):
# what works on a machine with no container engine. No registry is contacted unless BASE_IMAGE
# names one. pip inside a build step may not reach the package index (ours cannot): the wheels
# are downloaded here on the host from the lock, with hashes, into dev/image/wheelhouse (kept until
# the locks change), which the Dockerfile installs with --no-index --require-hashes.
set -euo pipefail
cd "$(dirname "$0")/../.."
PATH="$PATH:/usr/sbin:/sbin"  # debootstrap lives there

export BUILDAH_ISOLATION="${BUILDAH_ISOLATION:-chroot}"
export STORAGE_DRIVER="${STORAGE_DRIVER:-vfs}"
PYTHON="${PYTHON:-python3}"
IMAGE="${IMAGE:-localhost/spangate}"
BASE_IMAGE="${BASE_IMAGE:-}"
LOCAL_BASE=localhost/spangate-base:bookworm
PACKAGES=python3,python3-venv,ca-certificates
# Changing how the base is made? Change this too, so a cached base is made again.
RECIPE="debootstrap --variant=minbase --include=$PACKAGES bookworm; trimmed; v1"
WHEELHOUSE=dev/image/wheelhouse  # in the build context (the Dockerfile takes wheels from it)

# buildah 1.28 does not read STORAGE_DRIVER itself: every call names the driver.
bh() { buildah --storage-driver "$STORAGE_DRIVER" "$@"; }
say() { printf 'spangate image: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

# ---- what is needed --------------------------------------------------------------------------
missing=()
command -v buildah >/dev/null 2>&1 || missing+=(buildah)
if [ -z "$BASE_IMAGE" ] && ! command -v debootstrap >/dev/null 2>&1; then
  missing+=(debootstrap)
fi
if ((${#missing[@]})); then
  die "${missing[*]} not found: install them with \`apt-get install buildah debootstrap\`" \
    "(Debian/Ubuntu, as root), then run make image again"
fi
if [ "$(id -u)" -ne 0 ]; then
  die "buildah builds as root here (chroot isolation, vfs storage): run \`sudo make image\`"
fi
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null \
  || die "PYTHON=$PYTHON is not Python 3.11 (the lock and the image's Python are 3.11)"

# ---- cleanup of what this run made -----------------------------------------------------------
WORK=""
CONTAINER=""
cleanup() {
  if [ -n "$CONTAINER" ]; then bh rm "$CONTAINER" >/dev/null 2>&1 || true; fi
  if [ -n "$WORK" ]; then
    # debootstrap mounts /proc (and more) inside the root it makes: never delete through a mount.
    grep -o " $WORK/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    rm -rf --one-file-system "$WORK"
  fi
}
trap cleanup EXIT

# ---- the base image --------------------------------------------------------------------------
apt_mirror() {
  # The Debian mirror apt uses for bookworm (one-line .list and deb822 .sources files).
  "$PYTHON" - <<'PY'
import glob
import os
import re

def one_line(path):
    for line in open(path, encoding="utf-8"):
        parts = re.sub(r"\[[^]]*\]", "", line.split("#")[0]).split()
        if len(parts) >= 3 and parts[0] == "deb" and parts[2] == "bookworm":
            return parts[1]
    return None

def deb822(path):
    for stanza in re.split(r"\n\s*\n", open(path, encoding="utf-8").read()):
        fields = {}
        for line in stanza.splitlines():
            key, colon, value = line.partition(":")
            if colon and not line.startswith((" ", "\t", "#")):
                fields[key.strip().lower()] = value.split()
        if ("deb" in fields.get("types", []) and "bookworm" in fields.get("suites", [])
                and fields.get("enabled", ["yes"]) != ["no"] and fields.get("uris")):
            return fields["uris"][0]
    return None

paths = ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]
found = [one_line(p) for p in paths if os.path.isfile(p)]
found += [deb822(p) for p in sorted(glob.glob("/etc/apt/sources.list.d/*.sources"))]
print(next((uri for uri in found if uri), ""))
PY
}

label_of() {  # label_of IMAGE KEY: the image's label, empty when the image or label is missing
  bh inspect --type image --format "{{index .OCIv1.Config.Labels \"$2\"}}" "$1" 2>/dev/null || true
}

make_base() {
  local mirror shown rootfs mnt
  mirror="${DEBIAN_MIRROR:-$(apt_mirror)}"
  shown="${mirror:-the default mirror of debootstrap}"
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/spangate-base.XXXXXX")"
  rootfs="$WORK/rootfs"
  say "making the base image $LOCAL_BASE from Debian packages" \
    "(debootstrap bookworm from $shown; about a minute)"
  # shellcheck disable=SC2086  # an empty mirror is no argument: debootstrap's default
  if ! debootstrap --variant=minbase --include="$PACKAGES" bookworm "$rootfs" $mirror \
      >"$WORK/debootstrap.log" 2>&1; then
    tail -n 20 "$WORK/debootstrap.log" >&2
    die "debootstrap failed (the end of its log is above): can this machine reach the mirror?"
  fi
  # Trim what an image never uses: downloaded packages, apt's lists, manuals (copyrights stay).
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/var/log/*.log
  find "$rootfs/usr/share/doc" -type f ! -name copyright -delete
  CONTAINER="$(bh from scratch)"
  mnt="$(bh mount "$CONTAINER")"
  # /dev, /proc, /sys are the runtime's: only their empty folders go into the image.
  tar -C "$rootfs" --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
    --numeric-owner -cf - . | tar -C "$mnt" --numeric-owner -xpf -
  bh umount "$CONTAINER" >/dev/null
  bh config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --cmd python3 --label "spangate.base.recipe=$RECIPE" "$CONTAINER"
  bh commit --quiet --rm "$CONTAINER" "$LOCAL_BASE" >/dev/null
  CONTAINER=""
}

if [ -z "$BASE_IMAGE" ]; then
  BASE_IMAGE="$LOCAL_BASE"
  if [ "$(label_of "$LOCAL_BASE" spangate.base.recipe)" = "$RECIPE" ]; then
    say "base image $LOCAL_BASE (made earlier from Debian packages)"
  else
    make_base
  fi
fi

# ---- the wheelhouse --------------------------------------------------------------------------
# Binary wheels for the image's Python (CPython 3.11 on Debian bookworm, glibc 2.36, this
# machine's architecture), whatever the host's own glibc is.
LOCKS=(requirements.lock requirements-build.lock)
locks_sum="$(cat "${LOCKS[@]}" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$WHEELHOUSE/.locks-sha256" 2>/dev/null)" != "$locks_sum" ]; then
  say "downloading the wheels of ${LOCKS[*]} into $WHEELHOUSE (pip, with hashes)"
  find "$WHEELHOUSE" -name '*.whl' -delete
  arch="$(uname -m)"
  platforms=()
  for minor in $(seq 36 -1 17); do platforms+=(--platform "manylinux_2_${minor}_$arch"); done
  platforms+=(--platform "manylinux2014_$arch" --platform "manylinux2010_$arch"
    --platform "manylinux1_$arch")
  "$PYTHON" -m pip download -qq --disable-pip-version-check --require-hashes --no-deps \
    --only-binary=:all: --implementation cp --python-version 3.11 --abi cp311 --abi abi3 \
    --abi none "${platforms[@]}" -r requirements.lock -r requirements-build.lock -d "$WHEELHOUSE"
  echo "$locks_sum" >"$WHEELHOUSE/.locks-sha256"
fi

# ---- the image -------------------------------------------------------------------------------
version="$("$PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')"
revision="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
# The checkout's origin as the source label when it is an https URL, without any user:token@.
source_url="$(git remote get-url origin 2>/dev/null || true)"
case "$source_url" in https://*) ;; *) source_url="" ;; esac
source_url="$(printf '%s' "$source_url" | sed -E 's#^https://[^/@]*@#https://#; s#\.git$##')"
tag="$IMAGE:$version"
previous="$(bh inspect --type image --format '{{.FromImageID}}' "$tag" 2>/dev/null || true)"
say "building $tag on $BASE_IMAGE"
bh bud --quiet --isolation "$BUILDAH_ISOLATION" --layers=false -f Dockerfile \
  --build-arg "BASE_IMAGE=$BASE_IMAGE" \
  --build-arg "VERSION=$version" --build-arg "REVISION=$revision" \
  --build-arg "SOURCE_URL=$source_url" \
  -t "$tag" . >&2
current="$(bh inspect --type image --format '{{.FromImageID}}' "$tag")"
if [ -n "$previous" ] && [ "$previous" != "$current" ]; then
  bh rmi "$previous" >/dev/null 2>&1 || true  # the build it replaces (untagged now)
fi
echo "$tag"
