#!/bin/bash
# Entrypoint of the Chorus image's parties in docker-compose.yml. Each party
# makes its private key in its own volume, and it never leaves; only
# certificate requests and certificates cross the shared `exchange` volume.
#
#   chorus-entrypoint ca                 the federation's CA (see below)
#   chorus-entrypoint coordinator [ARGS] the coordinator (ARGS go to it)
#   chorus-entrypoint node NAME [ARGS]   an institution's node
#   chorus-entrypoint health             the container's health check
#
# The `ca` service signs every request that appears in the exchange volume:
# that suits a federation on one Docker host, where the operator controls
# every container. Across institutions, run `chorus certs sign` by hand on
# requests you have checked (README, "Deploying across institutions").
#
# Paths (for running this script outside a container, as the tests do):
# CHORUS_HOME (default /var/lib/chorus) holds this party's own files,
# CHORUS_EXCHANGE (default $CHORUS_HOME/exchange) is the shared volume,
# CHORUS_ETC (default /etc/chorus) holds the configs, CHORUS (default
# chorus) is the binary.
set -euo pipefail

home=${CHORUS_HOME:-/var/lib/chorus}
exchange=${CHORUS_EXCHANGE:-$home/exchange}
etc=${CHORUS_ETC:-/etc/chorus}
chorus=${CHORUS:-chorus}
coordinator_hosts=${CHORUS_COORDINATOR_HOSTS:-coordinator,localhost,127.0.0.1}

say() { echo "chorus-entrypoint: $*" >&2; }

# Copies FROM to TO by a rename, so a reader never sees half a file.
publish() {
  cp "$1" "$2.tmp.$$"
  mv -f "$2.tmp.$$" "$2"
}

# Makes NAME's key (once) and asks the CA for a certificate: waits until the
# CA has signed, then installs it with the CA's certificate in $home/pki.
enrol() {
  local name=$1
  mkdir -p "$home/pki" "$exchange/requests"
  if [ ! -f "$home/pki/$name.key" ]; then
    "$chorus" certs request --name "$name" --out "$home/pki" >/dev/null
    say "$name: made a private key in $home/pki (mode 0600; it stays here)"
  fi
  if [ ! -f "$home/pki/$name.crt" ]; then
    publish "$home/pki/$name.csr" "$exchange/requests/$name.csr"
    say "$name: sent a certificate request; waiting for the CA"
    until [ -s "$exchange/issued/$name.crt" ] && [ -s "$exchange/ca.crt" ]; do
      sleep 1
    done
    publish "$exchange/issued/$name.crt" "$home/pki/$name.crt"
  fi
  publish "$exchange/ca.crt" "$home/pki/ca.crt"
}

role=${1:?usage: chorus-entrypoint ca | coordinator [ARGS] | node NAME [ARGS]}
shift
case "$role" in
  ca)
    ca_dir="$home/ca"
    if [ ! -f "$ca_dir/ca.key" ]; then
      "$chorus" certs init --out "$ca_dir" >/dev/null
      say "made the federation's CA in $ca_dir"
    fi
    mkdir -p "$exchange/requests" "$exchange/issued"
    publish "$ca_dir/ca.crt" "$exchange/ca.crt"
    publish "$ca_dir/crl.pem" "$exchange/crl.pem"
    say "signing the requests that arrive in $exchange/requests"
    while true; do
      for csr in "$exchange"/requests/*.csr; do
        [ -f "$csr" ] || continue
        name=$(basename "$csr" .csr)
        [ -f "$exchange/issued/$name.crt" ] && continue
        case "$name" in
          coordinator) extra=(--coordinator "$coordinator_hosts") ;;
          ops*) extra=(--operator) ;;
          *) extra=() ;;
        esac
        if "$chorus" certs sign --ca "$ca_dir" "${extra[@]}" --renew \
             --out "$exchange/issued/$name.crt.new" "$csr" >/dev/null; then
          mv -f "$exchange/issued/$name.crt.new" "$exchange/issued/$name.crt"
          say "signed $name's request"
        else
          say "refused $name's request (above)"
          mv -f "$csr" "$csr.refused"
        fi
      done
      publish "$ca_dir/crl.pem" "$exchange/crl.pem"
      sleep 1
    done
    ;;
  coordinator)
    enrol coordinator
    cd "$home"
    exec "$chorus" coordinator --config "$etc/coordinator.toml" \
      --set "tls.ca=$home/pki/ca.crt" --set "tls.cert=$home/pki/coordinator.crt" \
      --set "tls.key=$home/pki/coordinator.key" --set "tls.crl=$exchange/crl.pem" \
      --set "coordinator.run_dir=$home/runs" "$@"
    ;;
  node)
    name=${1:?usage: chorus-entrypoint node NAME [ARGS]}
    shift
    enrol "$name"
    cd "$home"
    args=(--config "$etc/node.toml" --set "node.name=$name"
          --set "node.state_dir=$home/state" --set "expert.path=$home/state/expert.pt"
          --set "tls.ca=$home/pki/ca.crt" --set "tls.cert=$home/pki/$name.crt"
          --set "tls.key=$home/pki/$name.key")
    if [ ! -f "$home/state/expert.pt" ]; then
      say "$name: training its expert on its own data (once)"
      "$chorus" node train "${args[@]}" "$@"
    fi
    exec "$chorus" node "${args[@]}" "$@"
    ;;
  health)
    # The container's health check: the CA has published its certificate;
    # the coordinator accepts connections; a node holds an unexpired
    # certificate and a trained expert.
    if [ -f "$home/ca/ca.key" ]; then
      exec "$chorus" certs show "$exchange/ca.crt" >/dev/null
    elif [ -f "$home/pki/coordinator.key" ]; then
      exec bash -c "exec 3<>/dev/tcp/127.0.0.1/${CHORUS_PORT:-7700}"
    else
      test -s "$home/state/expert.pt" || exit 1
      for crt in "$home"/pki/*.crt; do
        [ "$(basename "$crt")" = ca.crt ] && continue
        "$chorus" certs show "$crt" | grep -q EXPIRED && exit 1
        exit 0
      done
      exit 1
    fi
    ;;
  *)
    say "unknown role '$role' (ca, coordinator, node NAME or health)"
    exit 2
    ;;
esac
