#!/usr/bin/env bash
# Build the real-image corpus (images.tsv) into one OCI layout.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=corpus-lib.sh
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/corpus-lib.sh"

usage() {
    cat <<EOF
Usage:
  build.sh [--quick] [--only NAME,...] [--out DIR] [--force]
  build.sh --list [--json] [--quick] [--only NAME,...] [--out DIR]
  build.sh --help

Builds the Debian bookworm images of testbed/corpus/images.tsv with
testbed/build-debian-image.sh into one OCI layout, tag = image name
(default layout: $CORPUS_OUT_DEFAULT). Layers: base (debootstrap, one blob
shared by all images), runtime (apt packages), app (files/NAME/app/...),
config (files/NAME/config/... and files/NAME/setup.sh); empty ones are left
out. Each image's labels carry its category and readiness rule
(org.nvtier.corpus.category, org.nvtier.corpus.ready).

  --quick          only the quick subset: ${CORPUS_QUICK[*]}
  --only A,B       only these images
  --out DIR        the OCI layout (default $CORPUS_OUT_DEFAULT)
  --force          rebuild even if up to date
  --list           print the (selected) corpus instead of building:
                   name, category, ready rule, cmd; with --json a JSON array
                   of {name, category, ready, packages, workdir, env, cmd,
                   quick, layout, image} (image = LAYOUT:NAME)

Cached: an image whose inputs did not change is "up to date" (no work).
Other images still build when one fails; the exit status is then 1.
Root (debootstrap, chroot). The apt step needs network to deb.debian.org.
EOF
}

QUICK=0 ONLY='' OUT=$CORPUS_OUT_DEFAULT LIST=0 JSON=0 FORCE=0
while (($#)); do
    case $1 in
        --quick) QUICK=1; shift ;;
        --only) ONLY=${2:?--only needs NAME,...}; shift 2 ;;
        --out) OUT=${2:?--out needs a directory}; shift 2 ;;
        --list) LIST=1; shift ;;
        --json) JSON=1; shift ;;
        --force) FORCE=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
((JSON == 0 || LIST == 1)) || die "--json goes with --list"
OUT=$(readlink -m "$OUT")

images=$(corpus_json "$QUICK" "$ONLY")
if ((LIST)); then
    if ((JSON)); then
        jq --arg out "$OUT" 'map(. + {layout: $out, image: "\($out):\(.name)"})' <<<"$images"
    else
        jq -r '(["NAME", "CATEGORY", "READY", "CMD"] | @tsv),
               (.[] | [.name, .category, .ready, (.cmd | @json)] | @tsv)' <<<"$images" | column -t -s $'\t'
    fi
    exit 0
fi
need_root

builder=$(dirname "$CORPUS_DIR")/build-debian-image.sh
failed=() total_start=$SECONDS
while read -r img; do
    name=$(jq -r .name <<<"$img")
    args=(--out "$OUT" --tag "$name" --packages "$(jq -r '.packages | join(" ")' <<<"$img")"
        --label "org.nvtier.corpus.category=$(jq -r .category <<<"$img")"
        --label "org.nvtier.corpus.ready=$(jq -r .ready <<<"$img")")
    ((FORCE)) && args+=(--force)
    for layer in app config; do
        dir=$CORPUS_DIR/files/$name/$layer
        [[ -d $dir ]] || continue
        while IFS= read -r -d '' f; do
            args+=("--$layer-file" "$f:${f#"$dir"}")
        done < <(find "$dir" -type f -print0 | sort -z)
    done
    [[ -f $CORPUS_DIR/files/$name/setup.sh ]] && args+=(--config-script "$CORPUS_DIR/files/$name/setup.sh")
    while IFS= read -r w; do args+=(--cmd "$w"); done < <(jq -r '.cmd[]' <<<"$img")
    while IFS= read -r e; do args+=(--env "$e"); done < <(jq -r '.env[]' <<<"$img")
    wd=$(jq -r '.workdir // empty' <<<"$img")
    [[ -z $wd ]] || args+=(--workdir "$wd")
    start=$SECONDS
    info "$name ..."
    mkdir -p "$(dirname "$OUT")"
    if PROG="build-debian-image.sh[$name]" bash "$builder" "${args[@]}" 2>"$OUT.$name.log"; then
        if grep -q 'is up to date' "$OUT.$name.log"; then
            info "$name: up to date"
        else
            info "$name: built in $((SECONDS - start)) s"
        fi
        rm -f "$OUT.$name.log"
    else
        cat "$OUT.$name.log" >&2
        warn "$name: build failed after $((SECONDS - start)) s (log: $OUT.$name.log)"
        failed+=("$name")
    fi
done < <(jq -c '.[]' <<<"$images")

((${#failed[@]} == 0)) || die "failed: ${failed[*]}"
info "done in $((SECONDS - total_start)) s: $OUT"
