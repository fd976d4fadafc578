#!/usr/bin/env bash
# Runs the ```sh blocks of a markdown file, so a guide or tutorial cannot rot.
#
#   scripts/run-doc.sh FILE.md              run every ```sh block of FILE.md, in order, in ONE bash process
#   scripts/run-doc.sh --list FILE.md       list the blocks (number, line, first line) and run nothing
#   scripts/run-doc.sh --print FILE.md      print the script that would run, and run nothing
#   scripts/run-doc.sh --blocks 1,3 FILE.md run only these blocks (numbers from --list), still in one process
#
# Only fences whose info string is exactly `sh` are run. ```text, ```console, ```sql, ```toml ... are shown to the
# reader and never run. The blocks are concatenated in order and run by `bash -euo pipefail` with the repository
# root as the working directory, so a variable set in one block is seen by the next, and the first failing
# command stops the run. Each block must be complete on its own (no heredoc or `if` left open across blocks).
#
# The binary: $ENGRAM_MIGRATE_BIN, default "$CARGO_TARGET_DIR/debug/engram-migrate" with CARGO_TARGET_DIR
# defaulting to ./target (where `cargo run` and scripts/test.sh build; CI sets CARGO_TARGET_DIR). Its directory is put first on PATH,
# so the docs call it as plain `engram-migrate`. Nothing is built here.
#
# Services: a document starts what it needs with scripts/services/*.sh itself and stops it at its end, usually with
# a `trap '...' EXIT` in its first block (the trap runs on failure too).
#
# On failure: the exit code of the failing command, and which block failed: its number, its line in the markdown,
# its first line, and the failing command with its own line in the markdown.
#
# Any markdown file works, README.md included: `scripts/run-doc.sh --list README.md`, then `--blocks 1`.
set -euo pipefail

usage() {
  echo "usage: $(basename "$0") [--list | --print | --blocks N[,N...]] FILE.md" >&2
  exit 2
}

mode=run
only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --list) mode=list; shift ;;
    --print) mode=print; shift ;;
    --blocks) [ $# -ge 2 ] || usage; only="$2"; shift 2 ;;
    --blocks=*) only="${1#--blocks=}"; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    -*) usage ;;
    *) break ;;
  esac
done
[ $# -eq 1 ] || usage
DOC="$1"
[ -f "$DOC" ] || { echo "run-doc: $DOC: no such file" >&2; exit 2; }
DOC_ABS="$(cd "$(dirname "$DOC")" && pwd)/$(basename "$DOC")"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/run-doc.XXXXXX")"
cleanup() { rm -rf "$TMP"; }
trap cleanup EXIT

# Extract the blocks. blocks.tsv: number, markdown line of the first content line, first non-empty line.
# body.sh: the blocks, each preceded by a marker call. map.txt: "script-line markdown-line" per body line.
awk -v only=",$only," -v body="$TMP/body.sh" -v map="$TMP/map.txt" -v list="$TMP/blocks.tsv" '
  BEGIN { in_fence = 0; run = 0; n = 0; out = 0 }
  !in_fence {
    if (match($0, /^ *(```+|~~~+)/)) {
      fence = substr($0, 1, RLENGTH); pad = fence; sub(/[`~]+$/, "", pad); pad = length(pad)
      if (pad > 3) next
      sub(/^ +/, "", fence); fchar = substr(fence, 1, 1); flen = length(fence)
      info = substr($0, RLENGTH + 1); gsub(/^[ \t]+|[ \t]+$/, "", info)
      in_fence = 1; run = (info == "sh"); first = ""; firstline = 0
      if (run) {
        n++
        selected = (only == ",," || index(only, "," n ",") > 0)
        if (selected) { out++; printf "__run_doc_block %d %d\n", n, NR + 1 > body; print out, NR > map }
      }
    }
    next
  }
  {
    # A closing fence: the same character, at least as long, nothing else on the line.
    c = $0; sub(/^ +/, "", c); sub(/[ \t]+$/, "", c)
    if (c ~ /^(`+|~+)$/ && substr(c, 1, 1) == fchar && length(c) >= flen) {
      if (run) printf "%d\t%d\t%s\n", n, (firstline ? firstline : NR), first > list
      in_fence = 0; run = 0
      next
    }
    if (run) {
      l = $0
      for (i = 0; i < pad && substr(l, 1, 1) == " "; i++) l = substr(l, 2)
      if (first == "" && l ~ /[^ \t]/) { first = l; firstline = NR }
      if (selected) { out++; print l > body; print out, NR > map }
    }
  }
  END {
    if (in_fence && run) printf "%d\t%d\t%s\n", n, (firstline ? firstline : NR), first > list
    if (in_fence) print "run-doc: warning: a code fence is never closed" > "/dev/stderr"
  }
' "$DOC"
touch "$TMP/blocks.tsv" "$TMP/body.sh" "$TMP/map.txt"
total="$(wc -l < "$TMP/blocks.tsv" | tr -d ' ')"
selected="$(grep -c '^__run_doc_block ' "$TMP/body.sh" || true)"

if [ "$mode" = list ]; then
  awk -F'\t' -v doc="$DOC" '{ printf "%3d  %s:%d  %s\n", $1, doc, $2, $3 }' "$TMP/blocks.tsv"
  exit 0
fi
[ "$total" -gt 0 ] || { echo "run-doc: $DOC has no \`\`\`sh blocks" >&2; exit 2; }

# The preamble: how the run reports progress and where it failed. The state file survives the document's own
# traps: the block being run, then (from the ERR trap) the innermost failing command and its script line.
PRE="$TMP/pre.sh"
cat > "$PRE" <<'PRE'
set -o errtrace
__run_doc_block() {
  printf 'block %s %s\n' "$1" "$2" > "$RUN_DOC_STATE"
  printf 'run-doc: block %s/%s (%s:%s)\n' "$1" "$RUN_DOC_TOTAL" "$RUN_DOC_NAME" "$2" >&2
}
trap 'printf "cmd %s %s\n" "$LINENO" "${BASH_COMMAND%%$'"'"'\n'"'"'*}" >> "$RUN_DOC_STATE"' ERR
PRE
pre_lines="$(wc -l < "$PRE" | tr -d ' ')"
{ cat "$PRE"; cat "$TMP/body.sh"; } > "$TMP/script.sh"

if [ "$mode" = print ]; then
  cat "$TMP/script.sh"
  exit 0
fi

# The binary and PATH.
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="${ENGRAM_MIGRATE_BIN:-$CARGO_TARGET_DIR/debug/engram-migrate}"
if [ ! -x "$BIN" ]; then
  echo "run-doc: no engram-migrate binary at $BIN" >&2
  echo "  build one (cargo build, or scripts/test.sh) or point ENGRAM_MIGRATE_BIN at it" >&2
  exit 2
fi
BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"
if [ "$(basename "$BIN")" = engram-migrate ]; then
  BINDIR="$(dirname "$BIN")"
else
  # Another file name: the docs call `engram-migrate`, so give it that name.
  BINDIR="$TMP/bin"; mkdir -p "$BINDIR"; ln -s "$BIN" "$BINDIR/engram-migrate"
fi

echo "run-doc: $DOC: running $selected of $total block(s), engram-migrate = $BIN" >&2
STATE="$TMP/state"; : > "$STATE"
start=$(date +%s)
set +e
(
  cd "$ROOT"
  export PATH="$BINDIR:$PATH" RUN_DOC_STATE="$STATE" RUN_DOC_TOTAL="$total" RUN_DOC_NAME="$DOC"
  exec bash -euo pipefail "$TMP/script.sh"
)
rc=$?
set -e
secs=$(( $(date +%s) - start ))

if [ "$rc" -eq 0 ]; then
  echo "run-doc: $DOC: ok, $selected block(s) in ${secs} s" >&2
  exit 0
fi

# Which block, and which command.
block_line="$(grep '^block ' "$STATE" | tail -1 || true)"
n="$(echo "$block_line" | awk '{print $2}')"
{
  echo
  echo "run-doc: $DOC: FAILED with exit code $rc after ${secs} s"
  if [ -n "$n" ]; then
    IFS=$'\t' read -r _ bline bfirst < <(awk -F'\t' -v n="$n" '$1 == n' "$TMP/blocks.tsv")
    echo "  block $n of $total, at $DOC:$bline: $bfirst"
    # The last failing command reported after that block started: the one that stopped the run (a command
    # substitution that failed harmlessly earlier in the block reported first, and is not it).
    cmd="$(awk '/^block /{c=""} /^cmd /{ c = $0 } END { print c }' "$STATE")"
    if [ -n "$cmd" ]; then
      sline="$(echo "$cmd" | awk '{print $2}')"
      text="$(echo "$cmd" | cut -d' ' -f3-)"
      mline="$(awk -v s="$((sline - pre_lines))" '$1 == s { print $2 }' "$TMP/map.txt")"
      if [ -n "$mline" ]; then
        echo "  failing command at $DOC:$mline: $text"
      else
        echo "  failing command: $text"
      fi
    fi
  else
    echo "  before the first block started"
  fi
} >&2
exit "$rc"
