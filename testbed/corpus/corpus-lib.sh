# shellcheck shell=bash
# The corpus spec (images.tsv) for build.sh and check.sh. Sourced, never run;
# brings in the testbed's lib.sh (die, warn, need_root, ...) as well.

# shellcheck source-path=SCRIPTDIR source=../lib.sh
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../lib.sh"

CORPUS_DIR=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
CORPUS_TSV=$CORPUS_DIR/images.tsv
# shellcheck disable=SC2034 # used by the scripts that source this file
CORPUS_OUT_DEFAULT=/var/tmp/nvtier-bench-images/corpus
# The quick subset (hot-file tiering benchmark): one image each of
# language, web server, database, distro shell.
CORPUS_QUICK=(python nginx redis debian)
CORPUS_CATEGORIES=(distro language database web-server web-framework other)

# corpus_json [QUICK [ONLY]]: the (selected) images as a JSON array of
# {name, category, ready, packages[], workdir, env[], cmd[], quick}; dies on
# a malformed images.tsv (columns, duplicate names or ports, categories).
# QUICK=1 selects CORPUS_QUICK; ONLY is a comma-separated list of names.
corpus_json() {
    local quick=${1:-0} only=${2:-} all
    all=$(jq -R -s --argjson q "$(jq -cn '$ARGS.positional' --args -- "${CORPUS_QUICK[@]}")" \
        --argjson cats "$(jq -cn '$ARGS.positional' --args -- "${CORPUS_CATEGORIES[@]}")" '
        def dash(f): if f == "-" then null else f end;
        def words(f): if f == "-" then [] else (f | split(" ") | map(select(length > 0))) end;
        [split("\n")[] | select(length > 0 and (startswith("#") | not)) | split("\t")]
        | map(if length != 7 then error("images.tsv: want 7 TAB-separated columns: \(join(" | "))") else . end
            | {name: .[0], category: .[1], ready: .[2], packages: words(.[3]),
               workdir: dash(.[4]), env: words(.[5]),
               cmd: (.[6] | try fromjson catch error("images.tsv: bad cmd JSON: \(.)"))}
            | .quick = (.name as $n | $q | index([$n]) != null))
        | (map(.name) | group_by(.) | map(select(length > 1)[0])) as $dup
        | if $dup != [] then error("images.tsv: duplicate names \($dup)") else . end
        | (map(.ready | select(startswith("port:"))) | group_by(.) | map(select(length > 1)[0])) as $dp
        | if $dp != [] then error("images.tsv: duplicate ports \($dp)") else . end
        | map(if (.name | test("^[a-z0-9][a-z0-9-]*$") | not) then error("images.tsv: bad name \(.name)")
              elif (.category as $c | $cats | index([$c])) == null then error("images.tsv: bad category \(.category) of \(.name)")
              elif (.ready | test("^(exit(:.+)?|port:[0-9]+)$") | not) then error("images.tsv: bad ready \(.ready) of \(.name)")
              elif (.cmd | type != "array" or length == 0) then error("images.tsv: cmd of \(.name) is not a non-empty array")
              else . end)
    ' "$CORPUS_TSV" 2>&1) || die "${all#jq: error (at *): }"
    local sel
    if [[ -n $only ]]; then
        sel=$(jq -c --argjson w "$(tr ',' '\n' <<<"$only" | jq -R . | jq -cs .)" '
            ($w - map(.name)) as $bad
            | if $bad != [] then error("unknown image(s): \($bad | join(","))") else . end
            | [.[] | select(.name as $n | $w | index([$n]) != null)]' <<<"$all" 2>&1) ||
            die "${sel#jq: error (at *): }"
    elif ((quick)); then
        sel=$(jq -c 'map(select(.quick))' <<<"$all")
    else
        sel=$all
    fi
    printf '%s\n' "$sel"
}
