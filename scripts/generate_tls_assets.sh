#!/usr/bin/env bash
# Generate a private CA plus a server and a client certificate for running
# Stem against a TLS / mutual-TLS Redis.
#
# Usage:
#   scripts/generate_tls_assets.sh [out_dir=certs] [primary_host=redis] [alt_names_csv=redis,localhost,127.0.0.1]
#
# Environment:
#   DAYS        validity in days of every certificate (default 365)
#   CLIENT_CN   common name of the client certificate (default stem-client)
#   KEY_MODE    mode of server.key and client.key (default 600). The compose
#               stack's containers run as their own users (redis as 999,
#               Stem as 10001), not as the owner of the bind-mounted files,
#               so for docker-compose.yml use KEY_MODE=644 (demo keys only)
#   CA_KEY_DIR  where the CA's private key goes (default: beside out_dir,
#               "<out_dir>-ca", e.g. certs-ca/); it must not lie inside
#               out_dir, which docker-compose.yml mounts into the services
#
# Produces in out_dir (what the services mount as /certs):
#   ca.crt                   CA certificate (CN "<primary_host>-ca")
#   server.key / server.crt  server certificate (CN primary_host, SAN = every
#                            entry of alt_names_csv: IP addresses as "IP.n",
#                            names as "DNS.n"), EKU serverAuth
#   client.key / client.crt  client certificate (CN $CLIENT_CN), EKU clientAuth
# and in CA_KEY_DIR:
#   ca.key                   the CA's key, mode 600, never mounted into a
#                            service (a ca.key left in out_dir by an older
#                            run is removed)
#
# Keys are EC P-256, created under umask 077; certificates are made 0644.
set -euo pipefail

OUT_DIR="${1:-certs}"
PRIMARY_HOST="${2:-redis}"
ALT_NAMES_CSV="${3:-redis,localhost,127.0.0.1}"
DAYS="${DAYS:-365}"
KEY_MODE="${KEY_MODE:-600}"
CLIENT_CN="${CLIENT_CN:-stem-client}"

if ! command -v openssl >/dev/null 2>&1; then
    echo "error: openssl not found on PATH (apt-get install openssl)" >&2
    exit 1
fi
if ! [[ "$KEY_MODE" =~ ^[0-7]{3,4}$ ]]; then
    echo "error: KEY_MODE must be an octal mode such as 600 or 644, got '$KEY_MODE'" >&2
    exit 1
fi
if ! [[ "$DAYS" =~ ^[0-9]+$ ]] || [ "$DAYS" -lt 1 ]; then
    echo "error: DAYS must be a positive integer, got '$DAYS'" >&2
    exit 1
fi

umask 077
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
CA_DIR="${CA_KEY_DIR:-${OUT_DIR}-ca}"
mkdir -p "$CA_DIR"
CA_DIR="$(cd "$CA_DIR" && pwd)"
case "$CA_DIR/" in
    "$OUT_DIR"/*)
        echo "error: CA_KEY_DIR ($CA_DIR) lies inside $OUT_DIR, which the services mount" >&2
        rmdir "$CA_DIR" 2>/dev/null || true
        exit 1
        ;;
esac
chmod 700 "$CA_DIR"
CA_KEY="$CA_DIR/ca.key"
cd "$OUT_DIR"
rm -f ca.key

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

is_ip() {
    local s="$1"
    # IPv4 dotted quad with each octet <= 255
    if [[ "$s" =~ ^([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})$ ]]; then
        local o
        for o in "${BASH_REMATCH[@]:1}"; do
            if [ "$o" -gt 255 ]; then
                return 1
            fi
        done
        return 0
    fi
    # IPv6: hex digits and colons (optionally a trailing dotted quad), at least one colon
    if [[ "$s" == *:* ]] && [[ "$s" =~ ^[0-9A-Fa-f:.]+$ ]]; then
        return 0
    fi
    return 1
}

# Build the subjectAltName section: IP.n for addresses, DNS.n for names.
SAN_SECTION=""
dns_n=0
ip_n=0
IFS=',' read -r -a ALT_NAMES <<<"$ALT_NAMES_CSV"
for raw in "${ALT_NAMES[@]}"; do
    # trim surrounding whitespace
    name="${raw#"${raw%%[![:space:]]*}"}"
    name="${name%"${name##*[![:space:]]}"}"
    [ -z "$name" ] && continue
    if is_ip "$name"; then
        ip_n=$((ip_n + 1))
        SAN_SECTION+="IP.${ip_n} = ${name}"$'\n'
    else
        dns_n=$((dns_n + 1))
        SAN_SECTION+="DNS.${dns_n} = ${name}"$'\n'
    fi
done
if [ -z "$SAN_SECTION" ]; then
    dns_n=1
    SAN_SECTION="DNS.1 = ${PRIMARY_HOST}"$'\n'
fi

cat >"$WORK/ca.ext" <<EOF
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
EOF

cat >"$WORK/server.ext" <<EOF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyAgreement
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
subjectAltName = @alt_names

[alt_names]
${SAN_SECTION}
EOF

cat >"$WORK/client.ext" <<EOF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyAgreement
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
EOF

gen_key() {
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
}

# --- CA ---------------------------------------------------------------------
gen_key "$CA_KEY"
# Self-signed via CSR + x509 -extfile: portable across openssl versions.
openssl req -new -sha256 -key "$CA_KEY" -subj "/CN=${PRIMARY_HOST}-ca" -out "$WORK/ca.csr"
openssl x509 -req -sha256 -in "$WORK/ca.csr" -signkey "$CA_KEY" -days "$DAYS" \
    -extfile "$WORK/ca.ext" -out ca.crt 2>/dev/null

# --- server -----------------------------------------------------------------
gen_key server.key
openssl req -new -sha256 -key server.key -subj "/CN=${PRIMARY_HOST}" -out "$WORK/server.csr"
openssl x509 -req -sha256 -in "$WORK/server.csr" -CA ca.crt -CAkey "$CA_KEY" -CAcreateserial \
    -days "$DAYS" -extfile "$WORK/server.ext" -out server.crt 2>/dev/null

# --- client -----------------------------------------------------------------
gen_key client.key
openssl req -new -sha256 -key client.key -subj "/CN=${CLIENT_CN}" -out "$WORK/client.csr"
openssl x509 -req -sha256 -in "$WORK/client.csr" -CA ca.crt -CAkey "$CA_KEY" -CAcreateserial \
    -days "$DAYS" -extfile "$WORK/client.ext" -out client.crt 2>/dev/null

rm -f ca.srl
chmod 600 "$CA_KEY"
chmod "$KEY_MODE" server.key client.key
chmod 644 ./*.crt
# The directory only lists public certificates and keys that guard
# themselves; containers running as other users must be able to enter it.
chmod 755 .

openssl verify -CAfile ca.crt server.crt client.crt >/dev/null

echo "TLS assets written to $(pwd):"
echo "  ca.crt                   CN=${PRIMARY_HOST}-ca (its key: ${CA_KEY}, not mounted)"
echo "  server.crt / server.key  CN=${PRIMARY_HOST}, SAN: $(printf '%s' "$SAN_SECTION" | sed -e 's/ = /:/' | paste -sd ' ' -)"
echo "  client.crt / client.key  CN=${CLIENT_CN} (clientAuth)"
echo "  valid for ${DAYS} days"
