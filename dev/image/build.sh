#!/usr/bin/env bash
# Build spangate's container image with buildah: `make image` and tests/image run this script.
#
#   dev/image/build.sh            prints the image's name (IMAGE:VERSION) last
#
# Environment:
#   IMAGE        the repository to tag (default localhost/spangate; tests/image passes a private
#                one, so that concurrent builds of other checkouts never touch its image)
#   BASE_IMAGE   the base to build on, pulled by buildah (on a machine that reaches a registry:
#                docker.io/library/python:3.11-slim-bookworm). Empty (the default): a base made
#                here from Debian's packages with debootstrap, upgraded from bookworm-updates and
#                bookworm-security, kept in buildah's storage as
#                localhost/spangate-base:bookworm-RECIPE-SUITES and made again when the recipe
#                below changes or when any of the three suites publishes new packages.
#   PYTHON       a host Python 3.11 or newer (reads pyproject.toml; its pip downloads the wheels,
#                or a throw-away venv's when it has none). Not the project's .venv: `sudo make
#                image` creates nothing owned by root in the checkout but the wheelhouse.
#   DEBIAN_MIRROR, DEBIAN_SECURITY_MIRROR
#                the mirrors for debootstrap and the upgrade (default: those apt uses on this
#                host, else deb.debian.org). The image's own sources.list names deb.debian.org.
#   SOURCE_URL   the org.opencontainers.image.source label (default: pyproject.toml's
#                [project.urls] Source); must be an https URL
#   SOURCE_DATE_EPOCH  the image's creation time (default: the git commit's time)
#
# buildah runs as root with chroot isolation and vfs storage (BUILDAH_ISOLATION, STORAGE_DRIVER):
# what works on a machine with no container engine. No registry is contacted unless BASE_IMAGE
# names one. pip inside a build step may not reach the package index (ours cannot): the wheels
# are downloaded here on the host from the lock, with hashes, into dev/image/wheelhouse (kept until
# the locks change), which the Dockerfile installs with --no-index --require-hashes.
#
# One buildah store is shared by every checkout on a machine: the base is made under an exclusive
# flock (BASE_LOCK) and every build that uses it holds the lock shared, so a base is never replaced
# under a running build; this script removes only images that no name points to any more.
# A build is skipped when an image carries the same spangate.build.hash label (a hash of what goes
# into the image: Dockerfile, locks, sources, build arguments, base image id): that image is
# tagged instead. Each checkout keeps its latest build as localhost/spangate-cache:CHECKOUT.
set -euo pipefail
cd "$(dirname "$0")/../.."
PATH="$PATH:/usr/sbin:/sbin"  # debootstrap, chroot live there

export BUILDAH_ISOLATION="${BUILDAH_ISOLATION:-chroot}"
export STORAGE_DRIVER="${STORAGE_DRIVER:-vfs}"
PYTHON="${PYTHON:-python3}"
IMAGE="${IMAGE:-localhost/spangate}"
BASE_IMAGE="${BASE_IMAGE:-}"
BASE_LOCK="${BASE_LOCK:-/var/lib/containers/spangate-base.lock}"
WORK_PARENT=/var/tmp  # debootstrap's root needs device nodes and room: never a tmpfs /tmp
PACKAGES=python3,python3-venv,ca-certificates
CANONICAL_MIRROR=http://deb.debian.org/debian
CANONICAL_SECURITY=http://deb.debian.org/debian-security
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
# Changing how the base is made? Change this too, so that a cached base is made again.
RECIPE="debootstrap --force-check-gpg --variant=minbase --include=$PACKAGES bookworm;"
RECIPE+=" apt-get upgrade from bookworm, bookworm-updates, bookworm-security;"
RECIPE+=" sources.list of deb.debian.org; empty hostname and resolv.conf; trimmed; v2"
WHEELHOUSE=dev/image/wheelhouse  # in the build context (the Dockerfile takes wheels from it)
CHECKOUT_KEY="$(pwd -P | sha256sum | cut -c1-12)"
CACHE_TAG="localhost/spangate-cache:$CHECKOUT_KEY"

# buildah 1.28 does not read STORAGE_DRIVER itself: every call names the driver.
bh() { buildah --storage-driver "$STORAGE_DRIVER" "$@"; }
say() { printf 'spangate image: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

# ---- what is needed --------------------------------------------------------------------------
missing=()
command -v buildah >/dev/null 2>&1 || missing+=(buildah)
if [ -z "$BASE_IMAGE" ]; then
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  [ -f "$KEYRING" ] || missing+=(debian-archive-keyring)
fi
if ((${#missing[@]})); then
  die "${missing[*]} not found: install them with \`apt-get install ${missing[*]}\`" \
    "(Debian/Ubuntu, as root), then run make image again"
fi
if [ "$(id -u)" -ne 0 ]; then
  die "buildah builds as root here (chroot isolation, vfs storage): run \`sudo make image\`"
fi
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null \
  || die "PYTHON=$PYTHON is not Python 3.11 or newer (it reads pyproject.toml with tomllib)"

# ---- cleanup of what this run made -----------------------------------------------------------
WORK="$(mktemp -d "$WORK_PARENT/spangate-image.XXXXXX")"
CONTAINER=""
WHEELS_TMP=""
cleanup() {
  if [ -n "$CONTAINER" ]; then bh rm "$CONTAINER" >/dev/null 2>&1 || true; fi
  if [ -n "$WHEELS_TMP" ]; then rm -rf "$WHEELS_TMP"; fi
  # debootstrap and the upgrade mount /proc (and more) inside the root: never delete through one.
  grep -o " $WORK/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT

# ---- the project -----------------------------------------------------------------------------
project="$("$PYTHON" -c '
import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
print(project["version"], project.get("urls", {}).get("Source", ""))')" \
  || die "cannot read pyproject.toml with PYTHON=$PYTHON"
read -r version source_default <<<"$project"
SOURCE_URL="${SOURCE_URL:-$source_default}"
[[ "$SOURCE_URL" =~ ^https://[^[:space:]@]+$ ]] \
  || die "SOURCE_URL='$SOURCE_URL' is not an https URL (pyproject.toml's [project.urls] Source)"
revision="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
epoch="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || true)}"
tag="$IMAGE:$version"

# ---- the base image --------------------------------------------------------------------------
apt_mirror() {  # apt_mirror SUITE: the mirror apt uses on this host for SUITE, or nothing
  "$PYTHON" - "$1" <<'PY'
import glob
import os
import re
import sys

suite = sys.argv[1]

def one_line(path):
    for line in open(path, encoding="utf-8"):
        parts = re.sub(r"\[[^]]*\]", "", line.split("#")[0]).split()
        if len(parts) >= 3 and parts[0] == "deb" and parts[2] == suite:
            return parts[1]
    return None

def deb822(path):
    for stanza in re.split(r"\n\s*\n", open(path, encoding="utf-8").read()):
        fields = {}
        for line in stanza.splitlines():
            key, colon, value = line.partition(":")
            if colon and not line.startswith((" ", "\t", "#")):
                fields[key.strip().lower()] = value.split()
        if ("deb" in fields.get("types", []) and suite in fields.get("suites", [])
                and fields.get("enabled", ["yes"]) != ["no"] and fields.get("uris")):
            return fields["uris"][0]
    return None

paths = ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]
found = [one_line(p) for p in paths if os.path.isfile(p)]
found += [deb822(p) for p in sorted(glob.glob("/etc/apt/sources.list.d/*.sources"))]
print(next((uri for uri in found if uri), ""))
PY
}

suites_key() {  # what the three suites publish now: their Packages indexes' hashes, hashed
  "$PYTHON" - "$MIRROR" "$SECURITY_MIRROR" "$(dpkg --print-architecture 2>/dev/null || uname -m)" <<'PY'
import hashlib
import sys
import urllib.request

mirror, security, arch = sys.argv[1:]
arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(arch, arch)
digest = hashlib.sha256()
for base, suite in ((mirror, "bookworm"), (mirror, "bookworm-updates"), (security, "bookworm-security")):
    url = f"{base.rstrip('/')}/dists/{suite}/Release"
    with urllib.request.urlopen(url, timeout=60) as answer:  # noqa: S310 (the apt mirror)
        release = answer.read().decode("utf-8")
    sha256 = release.partition("\nSHA256:\n")[2].split("\n")
    entries = [line.split() for line in sha256 if line.startswith(" ")]
    wanted = [e[0] for e in entries if len(e) == 3 and e[2] == f"main/binary-{arch}/Packages"]
    if not wanted:
        sys.exit(f"{url} lists no main/binary-{arch}/Packages")
    digest.update(f"{suite} {wanted[0]}\n".encode())
print(digest.hexdigest()[:12])
PY
}

make_base() {  # make_base NAME: debootstrap, upgraded, anonymous, trimmed, committed as NAME
  local rootfs="$WORK/rootfs" mnt
  say "making the base image $1 from Debian packages" \
    "(debootstrap bookworm from $MIRROR, security updates from $SECURITY_MIRROR; a minute or two)"
  if ! debootstrap --force-check-gpg --keyring="$KEYRING" --variant=minbase \
      --include="$PACKAGES" bookworm "$rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1; then
    tail -n 20 "$WORK/debootstrap.log" >&2
    die "debootstrap failed (the end of its log is above): can this machine reach the mirror?"
  fi
  # Security and stable updates: debootstrap installs bookworm as released. apt verifies the
  # suites' signatures with the keyring debootstrap installed; no service is started.
  printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb %s bookworm-security main\n' \
    "$MIRROR" "$MIRROR" "$SECURITY_MIRROR" >"$rootfs/etc/apt/sources.list"
  cat /etc/resolv.conf >"$rootfs/etc/resolv.conf"  # for the upgrade only: emptied below
  printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
  chmod 0755 "$rootfs/usr/sbin/policy-rc.d"
  mountpoint -q "$rootfs/proc" || mount -t proc proc "$rootfs/proc"
  if ! chroot "$rootfs" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
      DEBIAN_FRONTEND=noninteractive sh -euc 'apt-get update --error-on=any
        apt-get -y --with-new-pkgs -o Dpkg::Options::=--force-confold upgrade' \
      >"$WORK/upgrade.log" 2>&1; then
    tail -n 20 "$WORK/upgrade.log" >&2
    die "apt-get upgrade in the new base failed (the end of its log is above)"
  fi
  umount "$rootfs/proc"
  rm -f "$rootfs/usr/sbin/policy-rc.d"
  # Nothing of this host: the Debian sources everyone uses, no host name, no name server (a
  # container runtime provides both).
  printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb %s bookworm-security main\n' \
    "$CANONICAL_MIRROR" "$CANONICAL_MIRROR" "$CANONICAL_SECURITY" >"$rootfs/etc/apt/sources.list"
  : >"$rootfs/etc/hostname"
  : >"$rootfs/etc/resolv.conf"
  # Trim what an image never uses: downloaded packages, apt's lists and caches, manuals, logs
  # (copyrights stay).
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
    "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/* "$rootfs"/var/cache/debconf/*-old \
    "$rootfs"/var/lib/dpkg/*-old
  find "$rootfs/usr/share/doc" -type f ! -name copyright -delete
  CONTAINER="$(bh from scratch)"
  mnt="$(bh mount "$CONTAINER")"
  # /dev, /proc, /sys are the runtime's: only their empty folders go into the image.
  tar -C "$rootfs" --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
    --numeric-owner -cf - . | tar -C "$mnt" --numeric-owner -xpf -
  bh umount "$CONTAINER" >/dev/null
  # No label: a base's labels would be inherited by the image built on it.
  bh config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --cmd python3 "$CONTAINER"
  bh commit --quiet --rm "$CONTAINER" "$1" >/dev/null
  CONTAINER=""
  rm -rf --one-file-system "$rootfs"
}

image_id() {  # image_id NAME: the image's full id, or nothing
  bh inspect --type image --format '{{.FromImageID}}' "$1" 2>/dev/null || true
}

drop_if_unnamed() {  # drop_if_unnamed ID...: remove each image no name points to any more
  local id dangling
  dangling="$(bh images --noheading --no-trunc --filter dangling=true --format '{{.ID}}')"
  for id in "$@"; do
    if [ -n "$id" ] && grep -qx "sha256:${id#sha256:}" <<<"$dangling"; then
      bh rmi "$id" >/dev/null 2>&1 || true
    fi
  done
}

if [ -z "$BASE_IMAGE" ]; then
  MIRROR="${DEBIAN_MIRROR:-$(apt_mirror bookworm)}"
  MIRROR="${MIRROR:-$CANONICAL_MIRROR}"
  SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-$(apt_mirror bookworm-security)}"
  SECURITY_MIRROR="${SECURITY_MIRROR:-$CANONICAL_SECURITY}"
  suites="$(suites_key)" \
    || die "cannot read the Release files of bookworm, bookworm-updates and bookworm-security" \
      "from $MIRROR and $SECURITY_MIRROR (DEBIAN_MIRROR, DEBIAN_SECURITY_MIRROR)"
  recipe="$(printf '%s' "$RECIPE" | sha256sum | cut -c1-8)"
  base="localhost/spangate-base:bookworm-$recipe-$suites"
  mkdir -p "$(dirname "$BASE_LOCK")"
  exec 9>"$BASE_LOCK"
  lock() {  # lock -s|-x: take the base lock, saying so when another build holds it
    flock -n "$1" 9 && return
    say "waiting for $BASE_LOCK (another build is making or using a base image)"
    flock "$1" 9 || die "cannot lock $BASE_LOCK"
  }
  # Shared from here to the end of the build: no base is replaced under it. Exclusive only to
  # make a missing base (the switch is not atomic: the base is looked up again after each).
  lock -s
  if [ -n "$(image_id "$base")" ]; then
    say "base image $base (made earlier from Debian packages, up to date)"
  else
    flock -u 9
    lock -x
    if [ -z "$(image_id "$base")" ]; then
      make_base "$base"
      # The same recipe's bases for older suites are out of date, and no build holds the lock
      # shared, so none is using them. Other recipes' bases (another branch's script) stay.
      stale=()
      while read -r name; do
        if [[ "$name" == "localhost/spangate-base:bookworm-$recipe-"* && "$name" != "$base" ]]
        then
          stale+=("$name")
        fi
      done < <(bh images --noheading --format '{{.Name}}:{{.Tag}}')
      for name in "${stale[@]}"; do bh rmi "$name" >/dev/null 2>&1 || true; done
    fi
    lock -s
  fi
  base_id="$(image_id "$base")"
  [ -n "$base_id" ] || die "the base image $base was removed by another build: run this again"
else
  say "pulling $BASE_IMAGE"
  bh pull --quiet "$BASE_IMAGE" >/dev/null || die "buildah could not pull $BASE_IMAGE"
  base="$BASE_IMAGE"
  base_id="$(image_id "$BASE_IMAGE")"
fi

# ---- the wheelhouse --------------------------------------------------------------------------
# Binary wheels for the image's Python (CPython 3.11 on Debian bookworm, glibc 2.36, this
# machine's architecture), whatever the host's own Python and glibc are.
arch="$(uname -m)"
LOCKS=(requirements.lock requirements-build.lock)
wheels_key="$(
  printf 'cp311 manylinux_2_36 %s\n' "$arch"
  cat "${LOCKS[@]}"
)"
wheels_key="$(printf '%s' "$wheels_key" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$WHEELHOUSE/.key" 2>/dev/null)" != "$wheels_key" ]; then
  say "downloading the wheels of ${LOCKS[*]} into $WHEELHOUSE (pip, with hashes)"
  pip=("$PYTHON" -m pip)
  if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
    "$PYTHON" -m venv "$WORK/pip" \
      || die "PYTHON=$PYTHON has no pip and cannot make a venv: apt-get install python3-venv"
    pip=("$WORK/pip/bin/python" -m pip)
  fi
  platforms=()
  for minor in $(seq 36 -1 17); do platforms+=(--platform "manylinux_2_${minor}_$arch"); done
  platforms+=(--platform "manylinux2014_$arch" --platform "manylinux2010_$arch"
    --platform "manylinux1_$arch")
  # Into a new folder beside it, renamed into place once complete: an interrupted download
  # leaves no half wheelhouse behind a valid key.
  WHEELS_TMP="$(mktemp -d "$WHEELHOUSE.XXXXXX")"
  cp "$WHEELHOUSE/.gitignore" "$WHEELS_TMP/"
  "${pip[@]}" download -qq --disable-pip-version-check --require-hashes --no-deps \
    --only-binary=:all: --implementation cp --python-version 3.11 --abi cp311 --abi abi3 \
    --abi none "${platforms[@]}" -r requirements.lock -r requirements-build.lock -d "$WHEELS_TMP"
  echo "$wheels_key" >"$WHEELS_TMP/.key"
  chmod 0755 "$WHEELS_TMP"
  rm -rf "$WHEELHOUSE.old"
  mv "$WHEELHOUSE" "$WHEELHOUSE.old"
  mv "$WHEELS_TMP" "$WHEELHOUSE"
  WHEELS_TMP=""
  rm -rf "$WHEELHOUSE.old"
fi

# ---- the image -------------------------------------------------------------------------------
# What goes into the image: the build context's files (.dockerignore's allow-list), this script,
# the build arguments and the base's id.
build_hash="$(
  printf '%s\n' "base=$base_id" "version=$version" "revision=$revision" "source=$SOURCE_URL" \
    "epoch=$epoch" "wheels=$wheels_key"
  find Dockerfile .dockerignore dev/image/build.sh "${LOCKS[@]}" pyproject.toml README.md gateway \
    -type f ! -path '*/__pycache__/*' ! -name '*.py[co]' -print0 | LC_ALL=C sort -z \
    | xargs -0 sha256sum
)"
build_hash="$(printf '%s' "$build_hash" | sha256sum | cut -c1-64)"
previous=("$(image_id "$tag")" "$(image_id "$CACHE_TAG")")
# sed reads all of it (head -n1 would exit early: under pipefail, buildah's SIGPIPE is exit 141
# whenever two images carry the label, e.g. after a build by another checkout)
built="$(bh images --noheading --no-trunc --filter dangling=false \
  --filter "label=spangate.build.hash=$build_hash" --format '{{.ID}}' | sed -n 1p)"
if [ -n "$built" ] && bh tag "$built" "$tag" "$CACHE_TAG" 2>/dev/null; then
  say "$tag is up to date (the image ${built#sha256:} was built from the same sources on $base)"
else
  say "building $tag on $base"
  timestamp=()
  if [ -n "$epoch" ]; then timestamp=(--timestamp "$epoch"); fi
  bh bud --quiet --isolation "$BUILDAH_ISOLATION" --layers=false --pull=false \
    "${timestamp[@]}" -f Dockerfile \
    --build-arg "BASE_IMAGE=${base_id}" \
    --build-arg "VERSION=$version" --build-arg "REVISION=$revision" \
    --build-arg "SOURCE_URL=$SOURCE_URL" \
    --label "spangate.build.hash=$build_hash" \
    --iidfile "$WORK/iid" -t "$tag" . >&2
  bh tag "$(cat "$WORK/iid")" "$CACHE_TAG"
fi
exec 9>&-
drop_if_unnamed "${previous[@]}"  # the builds the names pointed to before, if nothing else does
echo "$tag"
