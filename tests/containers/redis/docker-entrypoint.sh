#!/bin/sh
# As the upstream image's entrypoint: a `redis-server` started as root
# owns its data directory and runs as the redis user; files it creates
# are private to it. Upstream builds Redis with protected mode off (the
# container's network is the boundary, and a password is the guard): the
# same default here, which a config file or a later argument overrides.
set -e
if [ "${1#-}" != "$1" ]; then
  set -- redis-server "$@"
fi
if [ "$1" = "redis-server" ] && [ "$(id -u)" = "0" ]; then
  find . \! -user redis -exec chown redis '{}' +
  exec setpriv --reuid=redis --regid=redis --init-groups "$0" "$@"
fi
if [ "$1" = "redis-server" ]; then
  shift
  if [ -n "${1:-}" ] && [ "${1#-}" = "$1" ]; then
    conf=$1
    shift
    set -- redis-server "$conf" --protected-mode no "$@"
  else
    set -- redis-server --protected-mode no "$@"
  fi
fi
umask 0077
exec "$@"
