#!/usr/bin/env bash
# The generated man pages and shell completions:
# - `vflaunch man` prints vflaunch(1), `vflaunch man --dir D` writes it and one
#   page per subcommand; each renders with groff -ww and `man --warnings -l`
#   without a single warning (a page with an unknown macro does warn, so the
#   check can fail), and vflaunch-run(1) documents --device;
# - sourcing `vflaunch completions bash` registers a completion function, and
#   completing `vflaunch run --dev` offers --device (and only --dev... words);
#   `vflaunch ch` completes to check, `--log-format ` to text and json;
# - the zsh and fish scripts pass their shell's syntax check where the shell
#   is installed, and name --device.
set -euo pipefail
apt_install groff-base man-db || true
apt_install zsh fish || true # only for the syntax checks of their scripts
for tool in groff man; do
    if ! command -v "$tool" >/dev/null; then
        skip docs "$tool not installed and apt-get could not install it"
        exit 0
    fi
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
ok() { echo "ok      $*"; }
bad() {
    echo "FAILED  $*"
    fail=1
}
claim() { # claim WHAT COMMAND...: ok WHAT if the command succeeds, else bad
    local what=$1
    shift
    if "$@"; then ok "$what"; else bad "$what"; fi
}

"$VFLAUNCH_BIN" man >"$tmp/stdout.1"
mkdir "$tmp/man1"
"$VFLAUNCH_BIN" man --dir "$tmp/man1"
if cmp -s "$tmp/stdout.1" "$tmp/man1/vflaunch.1"; then ok "vflaunch man = vflaunch.1 of --dir"; else bad "vflaunch man differs from --dir's vflaunch.1"; fi
for sub in run check ping api completions man; do
    [[ -s $tmp/man1/vflaunch-$sub.1 ]] || bad "no page vflaunch-$sub.1"
done
for page in "$tmp"/man1/*.1; do
    name=$(basename "$page")
    warnings=$(groff -man -Tutf8 -ww -z "$page" 2>&1)
    warnings+=$(MANWIDTH=80 man --warnings -E UTF-8 -l "$page" 2>&1 >/dev/null)
    if [[ -z $warnings ]]; then ok "$name renders without warnings"; else bad "$name: $warnings"; fi
done
printf '.TH BROKEN 1\n.SH NAME\nbroken\n.BOGUS macro\n' >"$tmp/broken.1"
if [[ -n $(groff -man -Tutf8 -ww -z "$tmp/broken.1" 2>&1) ]]; then ok "groff -ww warns about an unknown macro"; else bad "groff -ww is silent on an unknown macro"; fi
text=$(MANWIDTH=100 man -l "$tmp/man1/vflaunch-run.1" 2>/dev/null)
if [[ $text == *"--device <BDF[,fd=N]>"* && $text == *"--log-format"* ]]; then ok "vflaunch-run(1) documents --device and --log-format"; else bad "vflaunch-run(1) lacks --device: $text"; fi
text=$(MANWIDTH=100 man -l "$tmp/man1/vflaunch.1" 2>/dev/null)
if [[ $text == *SUBCOMMANDS* && $text == *"vflaunch-run(1)"* ]]; then ok "vflaunch(1) lists the subcommands' pages"; else bad "vflaunch(1): $text"; fi

# Bash: source the script, then call its completion function as readline does.
"$VFLAUNCH_BIN" completions bash >"$tmp/vflaunch.bash"
claim "bash -n vflaunch.bash" bash -n "$tmp/vflaunch.bash"
complete_words() { # complete_words WORD... (the last one is being completed)
    bash -c '
        source "$1"; shift
        spec=$(complete -p vflaunch) || exit 3
        fn=$(sed -n "s/.*-F \([^ ]*\).*/\1/p" <<<"$spec")
        COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1))
        COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
        "$fn" vflaunch "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}"
        printf "%s\n" "${COMPREPLY[@]}"
    ' _ "$tmp/vflaunch.bash" "$@"
}
mapfile -t got < <(complete_words vflaunch run --dev)
if printf '%s\n' "${got[@]}" | grep -qx -- --device && ! printf '%s\n' "${got[@]}" | grep -qv '^--dev'; then
    ok "vflaunch run --dev<TAB>: ${got[*]}"
else
    bad "vflaunch run --dev<TAB> offers: ${got[*]:-nothing}"
fi
mapfile -t got < <(complete_words vflaunch ch)
claim "vflaunch ch<TAB> offers: ${got[*]:-nothing} (want check)" [ "${got[*]:-}" = check ]
mapfile -t got < <(complete_words vflaunch run --log-format "")
claim "vflaunch run --log-format <TAB> offers: ${got[*]:-nothing} (want text json)" [ "${got[*]:-}" = "text json" ]

"$VFLAUNCH_BIN" completions zsh >"$tmp/_vflaunch"
"$VFLAUNCH_BIN" completions fish >"$tmp/vflaunch.fish"
claim "zsh script: #compdef vflaunch" grep -q '^#compdef vflaunch' "$tmp/_vflaunch"
claim "zsh script: --device" grep -q -- "--device" "$tmp/_vflaunch"
claim "fish script: complete -c vflaunch" grep -q '^complete -c vflaunch' "$tmp/vflaunch.fish"
claim "fish script: -l device" grep -q -- "-l device" "$tmp/vflaunch.fish"
if command -v zsh >/dev/null; then claim "zsh -n" zsh -n "$tmp/_vflaunch"; else echo "note    zsh not installed: its syntax is not checked"; fi
if command -v fish >/dev/null; then claim "fish --no-execute" fish --no-execute "$tmp/vflaunch.fish"; else echo "note    fish not installed: its syntax is not checked"; fi
if "$VFLAUNCH_BIN" completions tcsh >/dev/null 2>&1; then bad "completions tcsh accepted"; else ok "an unknown shell is refused"; fi
exit $fail
