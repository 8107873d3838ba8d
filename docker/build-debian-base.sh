#!/usr/bin/env bash
# Make a minimal Debian base image from Debian's own packages (mmdebstrap) and load it into
# buildah's local storage, for building docker/Dockerfile where no public base image can be
# pulled (CI). Idempotent: an image already stored under that name is kept (--force remakes it).
#
#   docker/build-debian-base.sh [--force] [NAME]        # as root; needs mmdebstrap and buildah
#   buildah bud --isolation chroot --pull=never -f docker/Dockerfile \
#       --build-arg BASE_IMAGE=localhost/mixsweep-debian-base:bookworm \
#       --build-arg TORCH_SPEC="torch==2.14.1 torchvision==0.29.1" -t mixsweep-debian .
#
# NAME defaults to localhost/mixsweep-debian-base:<suite>; SUITE (default bookworm) and MIRROR
# (default: mmdebstrap's, deb.debian.org) can be set in the environment.
# The base has python3 + python3-venv (the Dockerfile makes /opt/venv), passwd (useradd) and
# ca-certificates; the Dockerfile installs torch into the venv when TORCH_SPEC is given.
set -euo pipefail

force=0
if [[ "${1:-}" == "--force" ]]; then
    force=1
    shift
fi
suite="${SUITE:-bookworm}"
name="${1:-localhost/mixsweep-debian-base:${suite}}"

for tool in mmdebstrap buildah; do
    if ! command -v "$tool" >/dev/null; then
        echo "build-debian-base: $tool not found (apt-get install buildah mmdebstrap)" >&2
        exit 1
    fi
done
if [[ "$(id -u)" != 0 ]]; then
    echo "build-debian-base: run as root (mmdebstrap's root mode, buildah's root storage)" >&2
    exit 1
fi

if buildah inspect --type image "$name" >/dev/null 2>&1; then
    if [[ "$force" == 0 ]]; then
        echo "build-debian-base: $name is already there (--force to remake it)"
        exit 0
    fi
    buildah rmi "$name" >/dev/null
fi

work="$(mktemp -d)"
ctr=""
cleanup() {
    if [[ -n "$ctr" ]]; then
        buildah umount "$ctr" >/dev/null 2>&1 || true
        buildah rm "$ctr" >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

start=$SECONDS
mirror=()
if [[ -n "${MIRROR:-}" ]]; then
    mirror=("$MIRROR")
fi
# --variant=apt: Essential packages + apt; --include: what the Dockerfile needs on top.
# No apt lists or caches in the image (mmdebstrap's default cleanup removes them).
mmdebstrap --quiet --variant=apt --include=python3,python3-venv,passwd,ca-certificates \
    "$suite" "$work/rootfs.tar" "${mirror[@]}"

ctr="$(buildah from scratch)"
mnt="$(buildah mount "$ctr")"
tar -C "$mnt" --numeric-owner --xattrs --xattrs-include='*' -xf "$work/rootfs.tar"
buildah umount "$ctr" >/dev/null
buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --cmd /bin/bash \
    --label org.opencontainers.image.description="Debian ${suite} (mmdebstrap) + python3-venv: mixsweep's CI base" \
    "$ctr"
buildah commit --quiet --rm "$ctr" "$name" >/dev/null
ctr=""
echo "build-debian-base: $name made in $((SECONDS - start)) s"
