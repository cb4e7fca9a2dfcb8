#!/usr/bin/env bash
# Static checks of the compose stack (run by scripts/test.sh; no container
# engine runs here): docker-compose 1.29 validates docker-compose.yml with
# each .env profile; promtool checks the Prometheus config; nginx -t checks
# the gateway config as shipped, with the compose service names resolving
# to loopback through a private /etc/hosts in a mount namespace; the
# collector's pipelines name receivers and exporters it defines and start
# with memory_limiter, and every Grafana dashboard's datasource uid is
# provisioned; shellcheck lints scripts/ and the container stand-ins' scripts.
set -euo pipefail
cd "$(dirname "$0")/.."

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cp docker-compose.yml "$tmp/"
for profile in .env.example .env.hmac .env.hmac_tls .env.ed25519_tls; do
  cp "$profile" "$tmp/.env"
  docker-compose --project-directory "$tmp" -f "$tmp/docker-compose.yml" config -q
  echo "docker-compose config with $profile: ok"
done

promtool check config deploy/prometheus/prometheus.yml

echo "127.0.0.1 localhost" > "$tmp/hosts"
sed -n 's/.*server \([a-z][a-z0-9-]*\):[0-9]*;.*/\1/p' nginx/nginx.conf | sort -u |
  while read -r host; do echo "127.0.0.1 $host" >> "$tmp/hosts"; done
# shellcheck disable=SC2016 # expanded by the inner shell
unshare -m sh -c 'mount --bind "$1" /etc/hosts && nginx -t -q -c "$2" -e /dev/stderr' \
  sh "$tmp/hosts" "$PWD/nginx/nginx.conf"
echo "nginx -t on nginx/nginx.conf: ok"

/usr/bin/python3 - <<'PY'
import glob, json, sys
import yaml

errors = []
otel = yaml.safe_load(open("otel/collector.yaml"))
for name, p in otel["service"]["pipelines"].items():
    if (p.get("processors") or [None])[0] != "memory_limiter":
        errors.append(f"otel pipeline {name}: memory_limiter is not its first processor")
    for kind in ("receivers", "processors", "exporters"):
        for part in p.get(kind, []):
            if part not in (otel.get(kind) or {}):
                errors.append(f"otel pipeline {name}: {kind[:-1]} {part} is not defined")
uids = {d["uid"] for d in yaml.safe_load(open("deploy/grafana/provisioning/datasources/stem.yml"))["datasources"]}
def walk(v, path):
    if isinstance(v, dict):
        ds = v.get("datasource")
        if isinstance(ds, dict) and "uid" in ds and not str(ds["uid"]).startswith("$"):
            if ds["uid"] not in uids:
                errors.append(f"{path}: datasource uid {ds['uid']} is not provisioned")
        for x in v.values():
            walk(x, path)
    elif isinstance(v, list):
        for x in v:
            walk(x, path)
for f in sorted(glob.glob("deploy/grafana/dashboards/*.json")):
    walk(json.load(open(f)), f)
if errors:
    sys.exit("\n".join(errors))
print("collector pipelines (memory_limiter first) and Grafana datasource uids: ok")
PY

shellcheck scripts/*.sh tests/containers/*/*.sh
echo "shellcheck scripts/*.sh tests/containers/*/*.sh: ok"
