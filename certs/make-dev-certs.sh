#!/usr/bin/env bash
# Makes a development CA and a serving certificate for rndc-warden's admission webhook.
#
#   certs/make-dev-certs.sh [OUT_DIR] [SERVICE] [NAMESPACE]
#
# OUT_DIR (default: certs/out) receives ca.crt, ca.key, tls.crt, tls.key. The serving certificate
# names localhost, 127.0.0.1, ::1 and the Service's in-cluster names
# (SERVICE, SERVICE.NAMESPACE, SERVICE.NAMESPACE.svc, SERVICE.NAMESPACE.svc.cluster.local;
# default rndc-warden/rndc-warden). Extra names: EXTRA_SANS="DNS:dev.example,IP:10.0.0.5".
# Lifetimes in days: CA_DAYS (default 365), CERT_DAYS (default 90). ECDSA P-256 keys.
#
# For local runs and tests only; in a cluster use certificates.mode=self-managed or cert-manager.
set -euo pipefail

out=${1:-"$(dirname "$0")/out"}
service=${2:-rndc-warden}
namespace=${3:-rndc-warden}
ca_days=${CA_DAYS:-365}
cert_days=${CERT_DAYS:-90}

mkdir -p "$out"
umask 077
sans="DNS:localhost,IP:127.0.0.1,IP:::1,DNS:${service},DNS:${service}.${namespace}"
sans="${sans},DNS:${service}.${namespace}.svc,DNS:${service}.${namespace}.svc.cluster.local"
if [[ -n "${EXTRA_SANS:-}" ]]; then
  sans="${sans},${EXTRA_SANS}"
fi

openssl ecparam -name prime256v1 -genkey -noout -out "$out/ca.key"
openssl req -x509 -new -key "$out/ca.key" -sha256 -days "$ca_days" \
  -subj "/CN=rndc-warden development CA" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out "$out/ca.crt"

openssl ecparam -name prime256v1 -genkey -noout -out "$out/tls.key"
openssl req -new -key "$out/tls.key" -subj "/CN=${service}.${namespace}.svc" -out "$out/tls.csr"
ext=$(mktemp)
trap 'rm -f "$ext" "$out/tls.csr" "$out/ca.srl"' EXIT
cat > "$ext" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=${sans}
EXT
openssl x509 -req -in "$out/tls.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial \
  -sha256 -days "$cert_days" -extfile "$ext" -out "$out/tls.crt" 2>/dev/null
chmod 0644 "$out/ca.crt" "$out/tls.crt"

openssl verify -CAfile "$out/ca.crt" "$out/tls.crt" >/dev/null
echo "wrote $out/{ca.crt,ca.key,tls.crt,tls.key} (SANs: ${sans})"
