#!/usr/bin/env bash
# Makes, where the tag is missing, every image the shipped files name, on
# a machine that reaches no container registry (what this project's
# machines and CI have): nothing in docker-compose.yml or deploy/Dockerfile
# changes; the images appear under the tags they already name.
#
#   debian:bookworm-slim       debootstrap --variant=minbase + docker import
#   rust:<v>-bookworm          that base + gcc + this machine's own Rust
#                              toolchain, which must be version <v>, and
#                              the certificate authorities it trusts
#                              beyond Debian's (a proxy's, for crates.io)
#   redis:<tag>, nginx:<tag>,  that base + Debian's redis-server, nginx,
#   prom/prometheus:<tag>      prometheus (tests/containers/<name>/Dockerfile:
#                              the entrypoints and paths compose relies on)
#   stem-standin:local         busybox httpd answering for Grafana, Jaeger
#                              and the collector (no Debian packages)
#
# The tags are read from the shipped files, so a version bump there makes
# a new image here. An image under a tag that already exists is never
# touched: with a registry, `docker pull` first and this script does
# nothing for it. Debian's versions are not upstream's (redis-server 7.0
# under the redis:7.2.5 tag, for one); docs/deployment.md says so.
#
# Builds run with the host's network (apt inside the image builds).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "==> base-images: $*"; }
has_image() { docker image inspect "$1" >/dev/null 2>&1; }

# The tag a file names for an image repository (first match).
compose_image() {
  sed -n "s|^ *image: *\\($1:[^ ]*\\) *\$|\\1|p" docker-compose.yml | head -1
}

DEBIAN=debian:bookworm-slim
RUST=$(sed -n 's/^FROM \(rust:[^ ]*\) AS build$/\1/p' deploy/Dockerfile)
REDIS=$(compose_image redis)
NGINX=$(compose_image nginx)
PROMETHEUS=$(compose_image prom/prometheus)
STANDIN=stem-standin:local
for var in RUST REDIS NGINX PROMETHEUS; do
  [ -n "${!var}" ] || { echo "error: no ${var,,} image named in the shipped files" >&2; exit 1; }
done

build() { # TAG DIR
  log "building $1 from $2"
  local out
  out=$(docker build --network host -t "$1" "$2" 2>&1) \
    || { echo "$out" | tail -30 >&2; echo "error: building $1 failed (output above)" >&2; exit 1; }
}

if ! has_image "$DEBIAN"; then
  log "making $DEBIAN with debootstrap (minbase, bookworm)"
  root=$(mktemp -d /var/tmp/stem-rootfs.XXXXXX)
  trap 'rm -rf "$root"' EXIT
  debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >"$root.log" 2>&1 \
    || { tail -20 "$root.log" >&2; echo "error: debootstrap failed (log above)" >&2; exit 1; }
  rm -f "$root.log"
  # What the upstream slim image leaves out: package lists and caches,
  # documentation, manual pages and translations, now and in every package
  # installed later (dpkg's path-exclude), and downloaded packages after
  # each install (apt's docker-clean).
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
  cat > "$root/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF
  find "$root/usr/share/doc" -type f ! -name copyright -delete
  rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/*
  cat > "$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  echo 'APT::Install-Recommends "false";' > "$root/etc/apt/apt.conf.d/docker-no-recommends"
  tar -C "$root" -c . | docker import \
    --change 'CMD ["bash"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    - "$DEBIAN" >/dev/null
  rm -rf "$root"
  trap - EXIT
fi

if ! has_image "$RUST"; then
  want=${RUST#rust:}; want=${want%-bookworm}
  have=$(rustc --version | cut -d' ' -f2)
  case "$have" in
    "$want" | "$want".*) ;;
    *) echo "error: deploy/Dockerfile builds with $RUST, this machine's rustc is $have: install Rust $want (rustup toolchain install $want)" >&2
       exit 1 ;;
  esac
  sysroot=$(rustc --print sysroot)
  ctx=$(mktemp -d /var/tmp/stem-rust.XXXXXX)
  trap 'rm -rf "$ctx"' EXIT
  cp tests/containers/rust/Dockerfile "$ctx/"
  mkdir "$ctx/extra-ca"
  cp /usr/local/share/ca-certificates/*.crt "$ctx/extra-ca/" 2>/dev/null || true
  mkdir -p "$ctx/toolchain/bin"
  # The compiler, cargo and the standard library; no documentation.
  cp -a "$sysroot/lib" "$ctx/toolchain/"
  cp -a "$sysroot/bin/cargo" "$sysroot/bin/rustc" "$sysroot/bin/rustdoc" "$ctx/toolchain/bin/"
  build "$RUST" "$ctx"
  rm -rf "$ctx"
  trap - EXIT
fi

has_image "$REDIS" || build "$REDIS" tests/containers/redis
has_image "$NGINX" || build "$NGINX" tests/containers/nginx
has_image "$PROMETHEUS" || build "$PROMETHEUS" tests/containers/prometheus
has_image "$STANDIN" || build "$STANDIN" tests/containers/standin
log "ready: $DEBIAN $RUST $REDIS $NGINX $PROMETHEUS $STANDIN"
