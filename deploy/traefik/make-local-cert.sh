#!/bin/sh
# A local certificate authority and a TLS certificate it signs, for the compose stack's Traefik.
# docker-compose.dev.yml runs this once, in its one-shot `certs` service, into the traefik-certs
# volume; it runs as well on any host with openssl:  deploy/traefik/make-local-cert.sh DIR [HOST]
#
#   DIR/ca.crt  DIR/ca.key        the local CA (10 years). Trust ca.crt to get no browser warning:
#                                 docker compose -f docker-compose.dev.yml cp traefik:/certs/ca.crt .
#   DIR/local.crt  DIR/local.key  the server certificate Traefik serves: HOST (default $PUBLIC_HOST,
#                                 else localhost), localhost, 127.0.0.1 and ::1; 825 days, the
#                                 longest lifetime browsers accept
#
# Idempotent: a certificate that still names HOST and has 30 more days is kept (and so is the CA),
# so restarting the stack never asks you to trust a new CA. Delete DIR's files to start afresh.
set -eu

dir=${1:?usage: make-local-cert.sh DIR [HOST]}
host=${2:-${PUBLIC_HOST:-localhost}}
mkdir -p "$dir"
cd "$dir"

case $host in
  *[!0-9.]*) wanted="DNS:$host" ;;  # a name (anything but digits and dots)
  *) wanted="IP Address:$host" ;;  # an IPv4 address
esac

if [ -s local.crt ] && [ -s local.key ] && openssl x509 -in local.crt -noout -checkend 2592000 >/dev/null \
   && openssl x509 -in local.crt -noout -ext subjectAltName | tr ',' '\n' | sed 's/^ *//' | grep -qxF "$wanted"; then
  echo "kept the certificate for $host in $dir"
  exit 0
fi

umask 077  # the keys are readable by their owner only
if [ ! -s ca.key ] || [ ! -s ca.crt ]; then
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 -days 3650 \
    -subj "/CN=dualplane local CA" -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" -keyout ca.key -out ca.crt 2>/dev/null
fi

case $wanted in
  DNS:localhost) san="DNS:localhost,IP:127.0.0.1,IP:::1" ;;
  DNS:*) san="$wanted,DNS:localhost,IP:127.0.0.1,IP:::1" ;;
  *) san="IP:$host,DNS:localhost,IP:127.0.0.1,IP:::1" ;;
esac
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 -subj "/CN=$host" \
  -keyout local.key -out local.csr 2>/dev/null
printf '%s\n' "subjectAltName=$san" "basicConstraints=critical,CA:FALSE" \
  "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" > local.ext
openssl x509 -req -in local.csr -CA ca.crt -CAkey ca.key -set_serial "0x$(openssl rand -hex 16)" \
  -days 825 -sha256 -extfile local.ext -out local.crt 2>/dev/null
rm -f local.csr local.ext
chmod 644 ca.crt local.crt
echo "made a certificate for $host ($san) in $dir, signed by $dir/ca.crt"
