#!/usr/bin/env bash
# Push an image from an OCI layout to a plain-HTTP registry with skopeo.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"

usage() {
    cat <<'EOF'
Usage:
  push-image.sh OCI_DIR:TAG REGISTRY/REPO:TAG
  push-image.sh --help

Copies image TAG of the OCI image layout OCI_DIR to REGISTRY (host:port,
plain HTTP, e.g. $REGISTRY from `registry.sh env NAME`) as REPO:TAG with
  skopeo copy --dest-tls-verify=false --preserve-digests \
      oci:OCI_DIR:TAG docker://REGISTRY/REPO:TAG
Layers are copied as they are (gzip, same digests). Prints the pushed
manifest digest on stdout.

Example:
  eval "$(testbed/registry.sh env r1)"
  testbed/push-image.sh /var/tmp/img:v1 "$REGISTRY/test/busy:v1"
EOF
}

case ${1-} in
    -h | --help) usage; exit 0 ;;
esac
(($# == 2)) || { usage >&2; exit 2; }
SRC=$1 DST=$2

[[ $SRC == *:* ]] || die "source '$SRC' must be OCI_DIR:TAG"
SRC_DIR=${SRC%:*}
SRC_TAG=${SRC##*:}
[[ -n $SRC_DIR && -n $SRC_TAG && $SRC_TAG != */* ]] || die "source '$SRC' must be OCI_DIR:TAG"
[[ -f $SRC_DIR/oci-layout && -f $SRC_DIR/index.json ]] || die "'$SRC_DIR' is not an OCI image layout"
need_cmd skopeo jq
jq -e --arg t "$SRC_TAG" \
    'any(.manifests[]?; .annotations["org.opencontainers.image.ref.name"] == $t)' \
    "$SRC_DIR/index.json" >/dev/null || die "tag '$SRC_TAG' not found in $SRC_DIR"

DST=${DST#docker://}
[[ $DST == */* ]] || die "destination '$DST' must be REGISTRY/REPO:TAG"
REG=${DST%%/*}
REPO_TAG=${DST#*/}
[[ $REPO_TAG == *:* ]] || die "destination '$DST' must end in :TAG"
[[ ${REPO_TAG%:*} =~ ^[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*$ ]] ||
    die "invalid repository name '${REPO_TAG%:*}' (lowercase [a-z0-9._-/])"

# The registry is local and plain HTTP: never go through a proxy.
export NO_PROXY="${REG%%:*}${NO_PROXY:+,$NO_PROXY}"
export no_proxy=$NO_PROXY

digestfile=$(mktemp)
trap 'rm -f "$digestfile"' EXIT
skopeo copy --quiet --dest-tls-verify=false --preserve-digests \
    --digestfile "$digestfile" \
    "oci:$SRC_DIR:$SRC_TAG" "docker://$REG/$REPO_TAG" ||
    die "skopeo copy oci:$SRC_DIR:$SRC_TAG -> docker://$REG/$REPO_TAG failed"
cat "$digestfile"
echo
