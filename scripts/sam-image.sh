#!/usr/bin/env bash
# scripts/sam-image.sh [arm64|x86_64]: the stand-in for AWS's provided.al2023
# base image, for `sam local invoke --invoke-image` on a machine that
# reaches no image registry. Prints the image's name on standard output
# (progress goes to standard error).
#
# It is Debian (bookworm, minbase, with ca-certificates), not Amazon Linux
# 2023: made with debootstrap from Debian's packages and `docker build`, laid
# out as Lambda lays out a function (/var/task, /var/runtime, /opt, with
# LAMBDA_TASK_ROOT and LAMBDA_RUNTIME_DIR set). The SAM CLI adds
# AWS's Runtime Interface Emulator to it. docs/development.md says what it
# proves and what it does not.
#
# Built once and kept: the name holds a hash of this file, the architecture
# and the SAM CLI's version (which adds its emulator on top), so a change to
# the recipe or the SAM CLI builds a new image and removes the old ones.
# An arm64 image on an x86_64 host runs under qemu-user-static, registered
# in binfmt_misc with the F flag (the kernel opens the emulator once, so it
# also works inside containers).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

ARCH=${1:-arm64}
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
case "$ARCH" in
  arm64) DEB_ARCH=arm64 PLATFORM=linux/arm64 QEMU=aarch64 ;;
  x86_64) DEB_ARCH=amd64 PLATFORM=linux/amd64 QEMU=x86_64 ;;
  *) echo "usage: $0 [arm64|x86_64] (the function's Architectures)" >&2; exit 2 ;;
esac
REPO_PREFIX=ef-sam-al2023

log() { echo "$@" >&2; }

scripts/docker.sh >&2
scripts/deploy-tools.sh sam >&2
SAM=$(scripts/deploy-tools.sh sam-path)
sam_version=$(SAM_CLI_TELEMETRY=0 "$SAM" --version)
hash=$( { cat scripts/sam-image.sh; echo "$ARCH $sam_version"; } | sha256sum | cut -c1-12)
IMAGE=$REPO_PREFIX-$hash:$ARCH

# binfmt_misc: lets the kernel (and so Docker) run the other architecture's
# binaries through qemu. Debian's qemu-user-static ships the registration
# (flags OPF); it is written here because machines without systemd
# (containers, CI) do not load /usr/lib/binfmt.d by themselves.
ensure_binfmt() {
  local entry=/proc/sys/fs/binfmt_misc/qemu-$QEMU
  local conf=/usr/lib/binfmt.d/qemu-$QEMU.conf
  [ -f "$conf" ] || apt_install qemu-user-static >&2
  if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    as_root mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  fi
  if [ -e "$entry" ] && grep -qx enabled "$entry" && grep -q '^flags: .*F' "$entry"; then
    return 0
  fi
  # A registration without F (the emulator looked up at each exec, which a
  # container's filesystem does not have) is replaced.
  if [ -e "$entry" ]; then echo -1 | as_root tee "$entry" >/dev/null; fi
  log "==> registering qemu-$QEMU-static in binfmt_misc (flags: F)"
  as_root sh -c "cat '$conf' > /proc/sys/fs/binfmt_misc/register"
  grep -q '^flags: .*F' "$entry" || { log "binfmt_misc did not take qemu-$QEMU with the F flag: $(cat "$entry")"; exit 1; }
}

[ "$DEB_ARCH" = "$(dpkg --print-architecture)" ] || ensure_binfmt

# One build at a time (make sam-invoke and the test may start together).
lock=/var/tmp/$REPO_PREFIX.lock
as_root touch "$lock"
exec 9<"$lock"
flock 9

if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
  started=$(date +%s)
  log "==> building the stand-in image $IMAGE for provided.al2023 ($ARCH): Debian $SUITE (debootstrap), then docker build; once, a few minutes"
  command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap >&2
  rootfs=$(as_root mktemp -d /var/tmp/$REPO_PREFIX-rootfs.XXXXXX)
  as_root chmod 0755 "$rootfs"
  trap 'as_root rm -rf "$rootfs"' EXIT
  # Its stages as lines, each package as a dot (the whole log is kept).
  debootstrap_log=/var/tmp/$REPO_PREFIX-debootstrap.log
  as_root debootstrap --variant=minbase --arch="$DEB_ARCH" --include=ca-certificates \
      "$SUITE" "$rootfs" "$MIRROR" 2>&1 | tee "$debootstrap_log" | awk '
        /^I: (Retrieving|Validating|Extracting|Unpacking|Configuring) [a-z0-9]/ { printf "."; fflush(); next }
        { print; fflush() }
        END { print "" }' >&2 || true
  if ! grep -q '^I: Base system installed successfully' "$debootstrap_log"; then
    log "debootstrap failed; its log: $debootstrap_log"
    exit 1
  fi
  # Lambda's layout: the function in /var/task, a custom runtime's bootstrap
  # may also be in /var/runtime, layers in /opt. No package cache.
  as_root mkdir -p "$rootfs/var/task" "$rootfs/var/runtime" "$rootfs/opt"
  as_root rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  # `docker build --platform` from scratch, not `docker import`: Docker 20.10
  # ignores an import's platform and would label the image amd64.
  context=$(mktemp -d /var/tmp/$REPO_PREFIX-context.XXXXXX)
  trap 'as_root rm -rf "$rootfs" "$context"' EXIT
  as_root tar -C "$rootfs" --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
    -cf "$context/rootfs.tar" .
  cat >"$context/Dockerfile" <<DOCKERFILE
FROM scratch
ADD rootfs.tar /
ENV LANG=C.UTF-8 \\
    TZ=:/etc/localtime \\
    PATH=/usr/local/bin:/usr/bin:/bin:/opt/bin \\
    LD_LIBRARY_PATH=/var/runtime:/var/runtime/lib:/var/task:/var/task/lib:/opt/lib \\
    LAMBDA_TASK_ROOT=/var/task \\
    LAMBDA_RUNTIME_DIR=/var/runtime
WORKDIR /var/task
LABEL org.opencontainers.image.description="stand-in for provided.al2023 ($ARCH): Debian $SUITE minbase, scripts/sam-image.sh"
DOCKERFILE
  log "==> docker build ($PLATFORM)"
  if ! DOCKER_BUILDKIT=0 docker build --platform "$PLATFORM" -t "$IMAGE" "$context" >"$context/build.log" 2>&1; then
    cat "$context/build.log" >&2
    exit 1
  fi
  log "==> $IMAGE built in $(( $(date +%s) - started )) s"
  # Older recipes' images, and the images the SAM CLI made from them
  # (<repository>:rapid-<arch>).
  docker images --format '{{.Repository}}:{{.Tag}}' \
    | grep -E "^$REPO_PREFIX-[0-9a-f]{12}:(rapid-)?$ARCH\$" \
    | grep -v "^$REPO_PREFIX-$hash:" \
    | xargs -r docker rmi >/dev/null 2>&1 || true
fi
echo "$IMAGE"
