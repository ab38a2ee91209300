#!/usr/bin/env bash
# `make volume-table`: the README's table "what works in a volume under agentsandbox vs runc",
# from the rows the last e2e run measured (e2e/tests/volumes*.rs write them to
# $STATE/results/volume-table/, which make down keeps). Prints the table; with --readme, also
# replaces it in README.md between its markers.
# shellcheck source=e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

rows_dir=$STATE/results/volume-table
shopt -s nullglob
rows=("$rows_dir"/*.row)
((${#rows[@]})) || die "no measured rows in $rows_dir: run the e2e tests (make test) first"
table=$(
  printf '%s\n' "| case | agentsandbox | runc (control) |" "|---|---|---|"
  cat "${rows[@]}"
)
printf '%s\n' "$table"
if [[ ${1:-} == --readme ]]; then
  TABLE=$table python3 - "$ROOT/README.md" <<'PY'
import os, sys
path = sys.argv[1]
text = open(path).read()
begin, end = "<!-- volume-table:begin -->", "<!-- volume-table:end -->"
if begin not in text or end not in text:
    sys.exit(f"{path} has no {begin} ... {end} block")
head, rest = text.split(begin, 1)
_, tail = rest.split(end, 1)
open(path, "w").write(head + begin + "\n" + os.environ["TABLE"] + "\n" + end + tail)
PY
  step "README.md updated"
fi
