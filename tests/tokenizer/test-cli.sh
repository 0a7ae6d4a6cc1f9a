#!/bin/sh
# test-cli.sh VL2D TOKENIZER_DIR - `vl2d tokenize` end to end.
# Expected ids come from tests/data/tokenizer/golden.jsonl.
set -u
vl2d=$1
dir=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0

check() {   # check NAME EXPECTED ACTUAL
    if [ "$2" != "$3" ]; then
        echo "FAIL $1: got '$3', want '$2'" >&2
        fail=1
    fi
}

out=$(printf 'Hello, world!' | "$vl2d" tokenize --model "$dir")
check plain "[19923, 14, 2058, 3]" "$out"

# raw bytes: U+FFFD, a NUL byte and DEL are kept
out=$(printf '\357\277\275 replacement char and \000 nul and \177 del' | "$vl2d" tokenize --model "$dir")
check nul "[2808, 15231, 1679, 305, 223, 191, 120255, 305, 223, 224, 1543]" "$out"

# trailing newlines are not stripped
out=$(printf 'a\n\nb' | "$vl2d" tokenize --model "$dir")
check newlines "[67, 271, 68]" "$out"
out=$(printf '\n' | "$vl2d" tokenize --model "$dir")
check newline "[201]" "$out"

# special-token strings become their ids; --bos puts BOS first
out=$(printf '<|User|>: <image>\nDescribe this image.\n\n<|Assistant|>:' | "$vl2d" tokenize --model "$dir" --bos)
check bos "[0, 128821, 28, 223, 128815, 201, 72188, 566, 4609, 339, 128822, 28]" "$out"
out=$(printf '' | "$vl2d" tokenize --model "$dir")
check empty "[]" "$out"
out=$(printf '' | "$vl2d" tokenize --model "$dir" --bos)
check empty-bos "[0]" "$out"

# --decode writes the text byte for byte
printf '[19923, 14, 2058, 3, 128815, 201]' | "$vl2d" tokenize --model "$dir" --decode > "$tmp/out"
printf 'Hello, world!<image>\n' > "$tmp/want"
cmp -s "$tmp/out" "$tmp/want" || { echo "FAIL decode" >&2; fail=1; }
printf '[2808, 15231, 1679, 305, 223, 191, 120255, 305, 223, 224, 1543]' | "$vl2d" tokenize -m "$dir" -d > "$tmp/out"
printf '\357\277\275 replacement char and \000 nul and \177 del' > "$tmp/want"
cmp -s "$tmp/out" "$tmp/want" || { echo "FAIL decode with NUL" >&2; fail=1; }

# errors: exit status 1 with a message, 2 for usage
printf '[1, "x"]' | "$vl2d" tokenize --model "$dir" --decode > /dev/null 2> "$tmp/err"
check bad-ids-status 1 $?
grep -q 'element 1 is not an integer id' "$tmp/err" || { echo "FAIL bad-ids message" >&2; fail=1; }
printf '{}' | "$vl2d" tokenize --model "$dir" --decode > /dev/null 2>&1
check not-array 1 $?
printf 'x' | "$vl2d" tokenize --model "$tmp/nonexistent" > /dev/null 2> "$tmp/err"
check missing-dir 1 $?
grep -q 'nonexistent/tokenizer.json' "$tmp/err" || { echo "FAIL missing-dir message" >&2; fail=1; }
printf 'x' | "$vl2d" tokenize > /dev/null 2>&1
check no-model 2 $?
printf 'x' | "$vl2d" tokenize --model "$dir" --bos --decode > /dev/null 2>&1
check bos-decode 2 $?

[ $fail = 0 ] && echo "vl2d tokenize: all checks passed"
exit $fail
