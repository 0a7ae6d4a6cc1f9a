#!/bin/bash
# test-curl.sh - vl2-http's wire format with curl (and jq), against a real
# vl2d serving the golden micro-mha checkpoint.  Expected answers are the
# golden ones (tests/data/golden/micro-mha/<case>/generated.json and
# input_ids.json: greedy, 12 new tokens), never vl2-http's own output.
#
# usage: test-curl.sh VL2D VL2HTTP CKPT PLUGIN_DIR GOLDEN_DIR IMAGES_DIR PNG2WEBP
set -uo pipefail
VL2D=$1 VL2HTTP=$2 CKPT=$3 PLUGINS=$4 GOLDEN=$5 IMAGES=$6 PNG2WEBP=$7
for t in curl jq base64; do
    command -v $t >/dev/null || { echo "$t not found: skipping"; exit 77; }
done
. "$(dirname "$0")/lib.sh"

G=$GOLDEN/micro-mha
gtext() { jq -r .text "$G/$1/generated.json"; }
gplen() { jq -r .prompt_len "$G/$1/generated.json"; }
gimg() { jq -r '.num_image_tokens[0]' "$G/$1/input_ids.json"; }

# the request body of one user turn: $1 text, then image files (parts in order:
# images first, as `vl2 ask` builds the golden prompt)
chat_body() {
    local text=$1 f mime n=0
    shift
    for f in "$@"; do
        case $f in
            *.png) mime=image/png ;; *.webp) mime=image/webp ;; *) mime=image/jpeg ;;
        esac
        n=$((n + 1))
        { printf '{"type":"image_url","image_url":{"url":"data:%s;base64,' "$mime"
          base64 -w0 "$f"
          printf '"}}'; } > "$DIR/part$n"
    done
    jq -nc --arg t "$text" '{type:"text",text:$t}' > "$DIR/part-text"
    for f in $(seq "$n"); do cat "$DIR/part$f"; done | cat - "$DIR/part-text" | jq -sc \
        '{model:"micro",temperature:0,max_tokens:12,messages:[{role:"user",content:.}]}'
}

post() {   # post PATH BODY_FILE [curl args...] -> body in $DIR/out, status echoed
    local path=$1 body=$2
    shift 2
    curl -s -o "$DIR/out" -w '%{http_code}' "$@" "$URL$path" -H 'Content-Type: application/json' \
        --data-binary @"$body"
}

start_daemon "$VL2D" "$CKPT" "$PLUGINS"
start_gateway "$VL2HTTP"

# ---- discovery ---------------------------------------------------------------
check "GET /health is 200 and ok" \
    test "$(curl -s -w ' %{http_code}' "$URL/health" | sed 's/.* //')" = 200
check "/health says ok" test "$(curl -s "$URL/health" | jq -r .status)" = ok
curl -s "$URL/v1/models" > "$DIR/models"
check "/v1/models lists micro with image input" \
    jq -e '.object == "list" and .data[0].id == "micro" and .data[0].object == "model"
           and (.data[0].input_modalities | index("image")) != null' "$DIR/models"
check "/v1/models/micro" test "$(curl -s "$URL/v1/models/micro" | jq -r .id)" = micro
check "/v1/models/nope is 404" \
    test "$(curl -s -o /dev/null -w '%{http_code}' "$URL/v1/models/nope")" = 404

# ---- non-streamed ---------------------------------------------------------------
chat_body "Describe this image." "$IMAGES/g_a_384.jpg" > "$DIR/a384.json"
st=$(post /v1/chat/completions "$DIR/a384.json")
check "a384: 200" test "$st" = 200
check "a384: the golden text" test "$(jq -r '.choices[0].message.content' "$DIR/out")" = "$(gtext a384)"
check "a384: object, id, role, finish_reason length" \
    jq -e '.object == "chat.completion" and (.id | startswith("chatcmpl-"))
           and .choices[0].message.role == "assistant" and .choices[0].finish_reason == "length"
           and .choices[0].index == 0 and (.created | type) == "number"' "$DIR/out"
check "a384: usage is the golden prompt length and 12 tokens" \
    jq -e --argjson p "$(gplen a384)" '.usage.prompt_tokens == $p and .usage.completion_tokens == 12
           and .usage.total_tokens == $p + 12' "$DIR/out"
check "a384: usage.prompt_tokens_details.cached_tokens is a count" \
    jq -e '.usage.prompt_tokens_details.cached_tokens >= 0' "$DIR/out"
cp "$DIR/out" "$DIR/a384.first"
st=$(post /v1/chat/completions "$DIR/a384.json")
check "a384 again: 200, the golden text" \
    test "$st" = 200 -a "$(jq -r '.choices[0].message.content' "$DIR/out")" = "$(gtext a384)"
check "a384 again: part of the prompt from vl2d's prefix cache (0 < cached < prompt_tokens)" \
    jq -e '.usage.prompt_tokens_details.cached_tokens > 0 and
           .usage.prompt_tokens_details.cached_tokens < .usage.prompt_tokens' "$DIR/out"
check "a384: boxes beside the text (none from random weights)" \
    jq -e '.choices[0].message.boxes == []' "$DIR/out"

jq -nc '{model:"micro",temperature:0,max_completion_tokens:12,
         messages:[{role:"user",content:"Write a haiku about GPUs."}]}' > "$DIR/text.json"
post /v1/chat/completions "$DIR/text.json" > /dev/null
check "textonly (string content): the golden text" \
    test "$(jq -r '.choices[0].message.content' "$DIR/out")" = "$(gtext textonly)"
check "textonly: golden prompt length" \
    jq -e --argjson p "$(gplen textonly)" '.usage.prompt_tokens == $p' "$DIR/out"
check "textonly: no boxes field without images" jq -e '.choices[0].message | has("boxes") | not' "$DIR/out"

chat_body "What is written here?" "$IMAGES/g_b_wide.png" > "$DIR/wide.json"
post /v1/chat/completions "$DIR/wide.json" > /dev/null
check "wide (PNG): the golden text" \
    test "$(jq -r '.choices[0].message.content' "$DIR/out")" = "$(gtext wide)"
if "$PNG2WEBP" "$IMAGES/g_b_wide.png" "$DIR/wide.webp"; then
    chat_body "What is written here?" "$DIR/wide.webp" > "$DIR/wide-webp.json"
    post /v1/chat/completions "$DIR/wide-webp.json" > /dev/null
    check "wide as lossless WebP: the golden text" \
        test "$(jq -r '.choices[0].message.content' "$DIR/out")" = "$(gtext wide)"
else
    fail "png2webp"
fi

# two images in one turn: [a384, wide, text] is "<image>\n<image>\nDescribe this
# image.": the golden a384 prompt plus wide's image tokens plus one "\n" token
chat_body "Describe this image." "$IMAGES/g_a_384.jpg" "$IMAGES/g_b_wide.png" > "$DIR/two.json"
st=$(post /v1/chat/completions "$DIR/two.json")
want=$(( $(gplen a384) + $(gimg wide) + 1 ))
check "two images: 200 and $want prompt tokens" \
    jq -e --argjson w "$want" '.usage.prompt_tokens == $w and .usage.completion_tokens == 12' "$DIR/out"

# stop string: the golden text cut before it
gt=$(gtext a384)
stopstr="还不够"
jq -c --arg s "$stopstr" '.stop = [$s, "never-seen"]' "$DIR/a384.json" > "$DIR/stop.json"
post /v1/chat/completions "$DIR/stop.json" > /dev/null
check "stop: the golden text up to the stop string, finish_reason stop" \
    jq -e --arg w "${gt%%"$stopstr"*}" '.choices[0].message.content == $w
           and .choices[0].finish_reason == "stop"' "$DIR/out"
jq -c '.max_completion_tokens = 3' "$DIR/a384.json" > "$DIR/three.json"
post /v1/chat/completions "$DIR/three.json" > /dev/null
c3=$(jq -r '.choices[0].message.content' "$DIR/out")
check "max_completion_tokens 3 wins over max_tokens 12; a prefix of the golden text" \
    bash -c '[ "$(jq .usage.completion_tokens "$1")" = 3 ] && [ -n "$2" ] && [ "${3#"$2"}" != "$3" ]' \
    _ "$DIR/out" "$c3" "$gt"

jq -c '.logprobs = true' "$DIR/a384.json" > "$DIR/lp.json"
post /v1/chat/completions "$DIR/lp.json" > /dev/null
check "logprobs: 12 tokens whose text is the golden text, each <= 0, bytes, no alternatives" \
    jq -e --arg g "$gt" '.choices[0].logprobs.content as $c | ($c | length) == 12
           and ([$c[].token] | join("")) == $g and all($c[]; .logprob <= 0 and .top_logprobs == []
           and (.bytes | length) == (.token | utf8bytelength))' "$DIR/out"
# top_logprobs N (greedy): N alternatives per token, sorted, probabilities
# summing to at most 1, the first the chosen token with its logprob; each
# with token, logprob and bytes as OpenAI writes them
TOPCHECK='.choices[0].logprobs.content as $c | ($c | length) == 12
    and ([$c[].token] | join("")) == $g
    and all($c[]; . as $t | (.top_logprobs | length) == $n
        and .top_logprobs[0].token == $t.token and .top_logprobs[0].logprob == $t.logprob
        and .top_logprobs[0].bytes == $t.bytes
        and ([.top_logprobs[].logprob] | . == (sort | reverse) and all(. <= 0)
             and (map(pow(2.718281828459045; .)) | add) <= 1.00001)
        and all(.top_logprobs[]; (keys == ["bytes", "logprob", "token"])
             and ((.token | test("\\\\x")) or (.bytes | length) == (.token | utf8bytelength))))'
for n in 1 5 20; do
    jq -c --argjson n $n '.logprobs = true | .top_logprobs = $n' "$DIR/a384.json" > "$DIR/lp.json"
    post /v1/chat/completions "$DIR/lp.json" > /dev/null
    check "top_logprobs $n: the golden text, $n sorted alternatives per token, the first the chosen one" \
        jq -e --arg g "$gt" --argjson n $n "$TOPCHECK" "$DIR/out"
done
jq -c '.logprobs = true | .top_logprobs = 3 | .stream = true' "$DIR/a384.json" > "$DIR/lp.json"
curl -sN "$URL/v1/chat/completions" --data-binary @"$DIR/lp.json" | sed -n 's/^data: //p' \
    | grep -v '^\[DONE\]$' > "$DIR/lpchunks"
check "SSE top_logprobs 3: the content chunks' logprobs as the non-streamed ones" \
    bash -c 'jq -s "{choices: [{logprobs: {content: [.[].choices[0].logprobs.content // empty | .[]]}}]}" "$1" \
             | jq -e --arg g "$2" --argjson n 3 "$3"' _ "$DIR/lpchunks" "$gt" "$TOPCHECK"
check "SSE top_logprobs 3: content in the same chunks as their logprobs" \
    jq -se 'all(.[] | select(.choices[0].delta.content // "" | length > 0);
                .choices[0].logprobs.content | length == 1)' "$DIR/lpchunks"

# ---- streamed (SSE) ------------------------------------------------------------
jq -c '.stream = true | .stream_options = {include_usage: true}' "$DIR/a384.json" > "$DIR/sse.json"
curl -sN -D "$DIR/headers" "$URL/v1/chat/completions" --data-binary @"$DIR/sse.json" > "$DIR/sse"
check "SSE: content type text/event-stream" grep -qi '^content-type: text/event-stream' "$DIR/headers"
check "SSE: every event is one 'data: ' line and a blank line" \
    awk 'NR % 2 == 1 && !/^data: / { exit 1 } NR % 2 == 0 && $0 != "" { exit 1 }' "$DIR/sse"
sed -n 's/^data: //p' "$DIR/sse" | grep -v '^\[DONE\]$' > "$DIR/chunks"
check "SSE: the last event is data: [DONE]" test "$(grep '^data: ' "$DIR/sse" | tail -1)" = "data: [DONE]"
check "SSE: first chunk carries the role and empty content" \
    bash -c 'head -1 "$1" | jq -e ".object == \"chat.completion.chunk\" and .choices[0].delta.role == \"assistant\" and .choices[0].delta.content == \"\" and .choices[0].finish_reason == null"' _ "$DIR/chunks"
check "SSE: the content deltas are the golden text" \
    test "$(jq -j '.choices[0].delta.content // empty' "$DIR/chunks")" = "$gt"
check "SSE: one id for all chunks" test "$(jq -r .id "$DIR/chunks" | sort -u | wc -l)" = 1
check "SSE: the chunk before usage has finish_reason length and the boxes" \
    bash -c 'tail -2 "$1" | head -1 | jq -e ".choices[0].finish_reason == \"length\" and .choices[0].delta.boxes == []"' _ "$DIR/chunks"
check "SSE: include_usage: a last chunk with empty choices and the golden counts" \
    bash -c 'tail -1 "$1" | jq -e --argjson p "$2" ".choices == [] and .usage.prompt_tokens == \$p and .usage.completion_tokens == 12"' _ "$DIR/chunks" "$(gplen a384)"
check "SSE: usage null in the other chunks" \
    bash -c 'head -n -1 "$1" | jq -e "has(\"usage\") and .usage == null" | grep -vqx true && exit 1 || exit 0' _ "$DIR/chunks"
jq -c '.stream = true' "$DIR/a384.json" > "$DIR/sse2.json"
curl -sN "$URL/v1/chat/completions" --data-binary @"$DIR/sse2.json" | sed -n 's/^data: //p' \
    | grep -v '^\[DONE\]$' > "$DIR/chunks2"
check "SSE without include_usage: no usage chunk, no usage key" \
    bash -c '! grep -q usage "$1" && [ "$(tail -1 "$1" | jq -r ".choices[0].finish_reason")" = length ]' _ "$DIR/chunks2"

# ---- bad input: the dialect's error object, the right status, never 500 -------------
bad() {   # bad WANT_STATUS DESCRIPTION BODY
    printf '%s' "$3" > "$DIR/bad.json"
    st=$(post /v1/chat/completions "$DIR/bad.json")
    if [ "$st" = "$1" ] && jq -e '(.error.message | type) == "string" and (.error.type | type) == "string"
                                 and (.error | has("param") and has("code"))' "$DIR/out" > /dev/null; then
        ok "bad input: $2 -> $1"
    else
        fail "bad input: $2: status $st, body $(head -c 300 "$DIR/out")"
    fi
}
bad 400 "not JSON" '{"messages": ['
bad 400 "not an object" '[1,2]'
bad 400 "no messages" '{"model":"micro","messages":[]}'
bad 400 "n = 2" '{"messages":[{"role":"user","content":"hi"}],"n":2}'
bad 404 "unknown model" '{"model":"nope","messages":[{"role":"user","content":"hi"}]}'
check "unknown model: code model_not_found" jq -e '.error.code == "model_not_found"' "$DIR/out"
bad 400 "remote https image" '{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://example.com/a.jpg"}}]}]}'
check "remote image: the message says why" grep -q 'fetches nothing' "$DIR/out"
bad 400 "remote http image" '{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"http://example.com/a.jpg"}}]}]}'
bad 400 "gif data URI" '{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/gif;base64,R0lGOD"}}]}]}'
bad 400 "bad base64" '{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,@@@"}}]}]}'
bad 400 "not an image" '{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAAAAAA"}}]}]}'
bad 400 "unknown part type" '{"messages":[{"role":"user","content":[{"type":"input_audio"}]}]}'
bad 400 "unknown role" '{"messages":[{"role":"tool","content":"hi"}]}'
bad 400 "temperature a string" '{"messages":[{"role":"user","content":"hi"}],"temperature":"hot"}'
bad 400 "temperature 3" '{"messages":[{"role":"user","content":"hi"}],"temperature":3}'
bad 400 "top_p 0" '{"messages":[{"role":"user","content":"hi"}],"top_p":0}'
bad 400 "max_tokens 0" '{"messages":[{"role":"user","content":"hi"}],"max_tokens":0}'
bad 400 "stop a number" '{"messages":[{"role":"user","content":"hi"}],"stop":5}'
bad 400 "top_logprobs without logprobs" '{"messages":[{"role":"user","content":"hi"}],"top_logprobs":2}'
bad 400 "top_logprobs 21" '{"messages":[{"role":"user","content":"hi"}],"logprobs":true,"top_logprobs":21}'
bad 400 "top_logprobs -1" '{"messages":[{"role":"user","content":"hi"}],"logprobs":true,"top_logprobs":-1}'
bad 400 "penalty 5" '{"messages":[{"role":"user","content":"hi"}],"presence_penalty":5}'
bad 400 "image tags without images" '{"messages":[{"role":"user","content":"<image> what?"}]}'
check "unknown route: 404 with an error object" \
    bash -c '[ "$(curl -s -o "$1" -w "%{http_code}" "$2/v1/nothing")" = 404 ] && jq -e .error.message "$1" >/dev/null' _ "$DIR/out" "$URL"
check "GET on a POST route: 405" \
    test "$(curl -s -o /dev/null -w '%{http_code}' "$URL/v1/chat/completions")" = 405

# ---- ollama dialect ---------------------------------------------------------------
b64a=$(base64 -w0 "$IMAGES/g_a_384.jpg")
jq -nc --arg i "$b64a" '{model:"micro",messages:[{role:"user",content:"Describe this image.",images:[$i]}],
                        options:{temperature:0,num_predict:12}}' > "$DIR/ochat.json"
curl -sN -D "$DIR/headers" "$URL/api/chat" --data-binary @"$DIR/ochat.json" > "$DIR/ndjson"
check "ollama chat: streams NDJSON by default" grep -qi '^content-type: application/x-ndjson' "$DIR/headers"
check "ollama chat: every line a JSON object" jq -e 'type == "object"' "$DIR/ndjson"
check "ollama chat: the streamed content is the golden text" \
    test "$(jq -j 'select(.done == false) | .message.content' "$DIR/ndjson")" = "$gt"
check "ollama chat: one final object with counts and durations in ns" \
    bash -c 'tail -1 "$1" | jq -e --argjson p "$2" ".done == true and .done_reason == \"length\" and .prompt_eval_count == \$p and .eval_count == 12 and .message.role == \"assistant\" and (.total_duration | type) == \"number\" and .total_duration >= .prompt_eval_duration and .prompt_eval_duration > 0 and .eval_duration > 0 and .load_duration == 0 and (.created_at | test(\"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z$\"))"' _ "$DIR/ndjson" "$(gplen a384)"
check "ollama chat: the final object carries boxes" bash -c 'tail -1 "$1" | jq -e ".message.boxes == []"' _ "$DIR/ndjson"
jq -c '.stream = false' "$DIR/ochat.json" > "$DIR/ochat1.json"
st=$(post /api/chat "$DIR/ochat1.json")
check "ollama chat stream:false: one object with the golden text" \
    jq -e --arg g "$gt" '.message.content == $g and .done == true and .eval_count == 12' "$DIR/out"
# Ollama's logprobs: [{token, logprob, bytes, top_logprobs}], the same
# checks as the OpenAI dialect's ($TOPCHECK on them)
OTOP='{choices: [{logprobs: {content: .}}]} | '"$TOPCHECK"
jq -c '.logprobs = true | .top_logprobs = 3' "$DIR/ochat1.json" > "$DIR/olp.json"
post /api/chat "$DIR/olp.json" > /dev/null
check "ollama chat logprobs, top_logprobs 3: 12 entries with 3 sorted alternatives, the first the chosen" \
    jq -e --arg g "$gt" --argjson n 3 ".message.content == \$g and (.logprobs | $OTOP)" "$DIR/out"
jq -c '.logprobs = true | .top_logprobs = 3' "$DIR/ochat.json" > "$DIR/olp.json"
curl -sN "$URL/api/chat" --data-binary @"$DIR/olp.json" > "$DIR/olpnd"
check "ollama chat streamed logprobs: one entry on each token's object, as non-streamed" \
    bash -c 'jq -se "all(.[] | select(.done == false); (.logprobs | length) == 1)" "$1" > /dev/null &&
             jq -s "[.[] | select(.done == false) | .logprobs[]]" "$1" |
             jq -e --arg g "$2" --argjson n 3 "$3"' _ "$DIR/olpnd" "$gt" "$OTOP"
jq -c '.logprobs = true' "$DIR/ochat1.json" > "$DIR/olp.json"
post /api/chat "$DIR/olp.json" > /dev/null
check "ollama chat logprobs without top_logprobs: no top_logprobs key" \
    jq -e --arg g "$gt" '(.logprobs | length) == 12 and ([.logprobs[].token] | join("")) == $g
                         and all(.logprobs[]; has("top_logprobs") | not)' "$DIR/out"
post /api/chat "$DIR/ochat1.json" > /dev/null
check "ollama chat without logprobs: no logprobs key" jq -e '.done == true and (has("logprobs") | not)' "$DIR/out"
jq -nc --arg i "$b64a" '{model:"micro:latest",prompt:"Describe this image.",images:[$i],stream:false,
                        options:{temperature:0,num_predict:12}}' > "$DIR/ogen.json"
post /api/generate "$DIR/ogen.json" > /dev/null
check "ollama generate (model:latest, images): the golden text in response" \
    jq -e --arg g "$gt" '.response == $g and .done == true and .model == "micro"' "$DIR/out"
jq -nc '{model:"micro",prompt:"Write a haiku about GPUs.",options:{temperature:0,num_predict:12}}' > "$DIR/ogen2.json"
curl -sN "$URL/api/generate" --data-binary @"$DIR/ogen2.json" > "$DIR/ndjson2"
check "ollama generate streamed: the golden textonly text" \
    test "$(jq -j '.response' "$DIR/ndjson2")" = "$(gtext textonly)"
jq -c --arg s "$stopstr" '.options.stop = [$s] | .stream = false' "$DIR/ochat.json" > "$DIR/ostop.json"
post /api/chat "$DIR/ostop.json" > /dev/null
check "ollama options.stop: cut before it, done_reason stop" \
    jq -e --arg w "${gt%%"$stopstr"*}" '.message.content == $w and .done_reason == "stop"' "$DIR/out"
check "ollama tags lists micro" test "$(curl -s "$URL/api/tags" | jq -r '.models[0].name')" = micro
check "ollama ps lists micro" test "$(curl -s "$URL/api/ps" | jq -r '.models[0].name')" = micro
check "ollama version" jq -e '.version | type == "string"' <(curl -s "$URL/api/version")
printf '{"model":"micro"}' > "$DIR/show.json"
post /api/show "$DIR/show.json" > /dev/null
check "ollama show: vision capability" jq -e '.capabilities | index("vision") != null' "$DIR/out"
printf '{"model":"nope"}' > "$DIR/show.json"
st=$(post /api/show "$DIR/show.json")
check "ollama show unknown: 404 {error}" bash -c '[ "$1" = 404 ] && jq -e "(.error | type) == \"string\"" "$2" >/dev/null' _ "$st" "$DIR/out"
printf '{"model":"nope","messages":[{"role":"user","content":"hi"}]}' > "$DIR/o404.json"
st=$(post /api/chat "$DIR/o404.json")
check "ollama chat unknown model: 404 {error}" bash -c '[ "$1" = 404 ] && jq -e .error "$2" >/dev/null' _ "$st" "$DIR/out"
printf '{"model":"micro","messages":[{"role":"user","content":"hi","images":["###"]}]}' > "$DIR/obad.json"
st=$(post /api/chat "$DIR/obad.json")
check "ollama bad base64 image: 400 {error}" bash -c '[ "$1" = 400 ] && jq -e .error "$2" >/dev/null' _ "$st" "$DIR/out"
printf '{"model":"micro","messages":[{"role":"user","content":"hi"}],"options":{"temperature":"x"}}' > "$DIR/obad.json"
check "ollama bad option: 400" test "$(post /api/chat "$DIR/obad.json")" = 400

# keep_alive 0 unloads after the answer; the next request loads it again
jq -c '.keep_alive = 0' "$DIR/ochat1.json" > "$DIR/okeep.json"
post /api/chat "$DIR/okeep.json" > /dev/null
check "keep_alive 0: answered with the golden text" jq -e --arg g "$gt" '.message.content == $g' "$DIR/out"
for i in $(seq 100); do
    [ "$(curl -s "$URL/api/tags" | jq '.models | length')" = 0 ] && break
    sleep 0.05
done
check "keep_alive 0: the model is unloaded afterwards" test "$(curl -s "$URL/api/tags" | jq '.models | length')" = 0
post /api/chat "$DIR/ochat1.json" > /dev/null
check "after the unload: loaded again on demand, golden text, load_duration > 0" \
    jq -e --arg g "$gt" '.message.content == $g and .load_duration > 0' "$DIR/out"
printf '{"model":"micro","keep_alive":0}' > "$DIR/ounload.json"
post /api/generate "$DIR/ounload.json" > /dev/null
check "empty generate with keep_alive 0: done_reason unload" jq -e '.done_reason == "unload" and .done' "$DIR/out"
printf '{"model":"micro"}' > "$DIR/oload.json"
post /api/generate "$DIR/oload.json" > /dev/null
check "empty generate: done_reason load" jq -e '.done_reason == "load" and .done' "$DIR/out"
check "and the model is back" test "$(curl -s "$URL/api/tags" | jq -r '.models[0].name')" = micro

# while a model loads: /health and requests say 503 (micro takes ~0.5 s to load,
# so the chat request may come after the load has ended: then the cycle of
# unload and load is tried again, at most five times)
seen_health=0 seen_chat=0
for attempt in 1 2 3 4 5; do
    post /api/generate "$DIR/ounload.json" > /dev/null
    curl -s "$URL/api/generate" --data-binary @"$DIR/oload.json" > "$DIR/loading.out" &
    lpid=$!
    for i in $(seq 300); do
        curl -s -o "$DIR/h" -w '%{http_code}' "$URL/health" > "$DIR/hs"
        if [ "$(cat "$DIR/hs")" = 503 ] && jq -e '.status == "loading"' "$DIR/h" > /dev/null; then
            seen_health=1
            code=$(post /v1/chat/completions "$DIR/text.json")
            [ "$code" = 503 ] &&
                jq -e '.error.type == "service_unavailable"' "$DIR/out" > /dev/null && seen_chat=1
            # 200: the load ended first (try again); anything else is a failure
            [ "$code" = 200 ] || [ "$code" = 503 ] || seen_chat=-1
            break
        fi
        kill -0 "$lpid" 2>/dev/null || break
        sleep 0.01
    done
    wait "$lpid"
    [ "$seen_chat" = 0 ] || break
done
check "loading: /health 503 with status loading" test "$seen_health" = 1
check "loading: a chat request gets 503" test "$seen_chat" = 1
check "loaded: /health 200 again" test "$(curl -s -o /dev/null -w '%{http_code}' "$URL/health")" = 200

# ---- many clients at once ---------------------------------------------------------
pids=
for i in $(seq 8); do
    curl -s "$URL/v1/chat/completions" --data-binary @"$DIR/text.json" > "$DIR/par$i" &
    pids="$pids $!"
done
wait $pids
n=0
for i in $(seq 8); do
    [ "$(jq -r '.choices[0].message.content' "$DIR/par$i")" = "$(gtext textonly)" ] && n=$((n + 1))
done
check "8 concurrent clients: all get the golden text" test "$n" = 8

# ---- a client that goes away cancels its generation --------------------------------
active() { curl -s "$URL/metrics" | sed -n 's/^vl2_daemon_active_sequences //p'; }
disc() { curl -s "$URL/metrics" | sed -n 's/^vl2_http_client_disconnects_total //p'; }
jq -nc '{model:"micro",temperature:0,max_tokens:4000,stream:true,
         messages:[{role:"user",content:"Write a haiku about GPUs."}]}' > "$DIR/long.json"
curl -sN "$URL/v1/chat/completions" --data-binary @"$DIR/long.json" > "$DIR/long.out" &
cpid=$!
for i in $(seq 200); do grep -q '"content":"[^"]' "$DIR/long.out" 2>/dev/null && break; sleep 0.02; done
check "disconnect: tokens were streaming" test "$(active)" = 1
kill "$cpid"; wait "$cpid" 2>/dev/null
for i in $(seq 250); do [ "$(active)" = 0 ] && break; sleep 0.02; done
check "disconnect (SSE): vl2d stops decoding within 5 s" test "$(active)" = 0
check "disconnect (SSE): counted" test "$(disc)" = 1
check "disconnect (SSE): far fewer than 4000 tokens were sent" \
    test "$(grep -c '"content"' "$DIR/long.out")" -lt 2000
jq -c '.stream = false' "$DIR/long.json" > "$DIR/long1.json"
curl -s -m 1 "$URL/v1/chat/completions" --data-binary @"$DIR/long1.json" > /dev/null
for i in $(seq 250); do [ "$(active)" = 0 ] && [ "$(disc)" = 2 ] && break; sleep 0.02; done
check "disconnect (non-streamed, Ollama too): cancelled" test "$(active)" = 0 -a "$(disc)" = 2
jq -nc '{model:"micro",options:{num_predict:4000},messages:[{role:"user",content:"hi"}]}' > "$DIR/olong.json"
curl -s -m 1 "$URL/api/chat" --data-binary @"$DIR/olong.json" > /dev/null
for i in $(seq 250); do [ "$(active)" = 0 ] && [ "$(disc)" = 3 ] && break; sleep 0.02; done
check "disconnect (Ollama NDJSON): cancelled" test "$(active)" = 0 -a "$(disc)" = 3

# ---- /metrics -------------------------------------------------------------------
curl -s "$URL/metrics" > "$DIR/metrics"
check "metrics: requests by route and code" grep -q '^vl2_http_requests_total{route="/v1/chat/completions",code="2xx"} [1-9]' "$DIR/metrics"
check "metrics: errors by code" grep -q '^vl2_http_errors_total{code="400"} [1-9]' "$DIR/metrics"
check "metrics: tokens" grep -q '^vl2_http_generated_tokens_total [1-9]' "$DIR/metrics"
check "metrics: TTFT histogram" grep -q '^vl2_http_time_to_first_token_seconds_bucket{le="+Inf"} [1-9]' "$DIR/metrics"
check "metrics: decode speed histogram" grep -q '^vl2_http_decode_tokens_per_second_count [1-9]' "$DIR/metrics"
check "metrics: queue depth" grep -q '^vl2_daemon_queue_depth 0' "$DIR/metrics"
check "metrics: every sample line is NAME{LABELS} VALUE" \
    bash -c '! grep -Ev "^#|^[a-z0-9_]+(\{[^}]*\})? [0-9.e+-]+$" "$1"' _ "$DIR/metrics"

# ---- body limit and API key -------------------------------------------------------
stop_all
start_daemon "$VL2D" "$CKPT" "$PLUGINS"
start_gateway "$VL2HTTP" --max-body 32k --api-key sekrit
check "api key: /health needs none" test "$(curl -s -o /dev/null -w '%{http_code}' "$URL/health")" = 200
check "api key: missing -> 401" test "$(post /v1/chat/completions "$DIR/text.json")" = 401
check "api key: 401 is an OpenAI error object" jq -e '.error.code == "invalid_api_key"' "$DIR/out"
check "api key: wrong -> 401" test "$(post /v1/chat/completions "$DIR/text.json" -H 'Authorization: Bearer nope')" = 401
check "api key: right -> 200" test "$(post /v1/chat/completions "$DIR/text.json" -H 'Authorization: Bearer sekrit')" = 200
check "api key: ollama routes too" test "$(post /api/chat "$DIR/o404.json")" = 401
check "body limit: Content-Length over 32k -> 413" \
    test "$(post /v1/chat/completions "$DIR/a384.json" -H 'Authorization: Bearer sekrit')" = 413
check "body limit: 413 is an error object" jq -e '.error.code == "request_too_large"' "$DIR/out"
check "body limit: chunked upload over 32k -> 413" \
    test "$(post /v1/chat/completions "$DIR/a384.json" -H 'Authorization: Bearer sekrit' -H 'Transfer-Encoding: chunked')" = 413
check "body limit: ollama error format" \
    bash -c '[ "$(curl -s -o "$1" -w "%{http_code}" -H "Authorization: Bearer sekrit" "$2/api/chat" --data-binary @"$3")" = 413 ] && jq -e "(.error|type) == \"string\"" "$1" > /dev/null' _ "$DIR/out" "$URL" "$DIR/ochat.json"

# ---- the daemon's queue is full: 429; the daemon is gone: 503 -----------------------
stop_all
printf '[daemon]\nmax_sequences = 1\nmax_queue = 1\n' > "$DIR/vl2d.conf"
cat "$DIR/vl2d.log" >> "$DIR/old-vl2d.log"
# --no-config above is replaced by this file's settings plus the flags
env -u LISTEN_FDS -u LISTEN_PID -u NOTIFY_SOCKET "$VL2D" serve --config "$DIR/vl2d.conf" \
    --model "micro=$CKPT" --plugin-dir "$PLUGINS" --socket "$SOCK" --threads 2 --no-notify \
    --no-socket-activation > "$DIR/vl2d.log" 2>&1 &
DPID=$!
for i in $(seq 300); do [ -S "$SOCK" ] && break; sleep 0.05; done
start_gateway "$VL2HTTP"
jq -c '.stream = false' "$DIR/long.json" > "$DIR/long1.json"
curl -s "$URL/v1/chat/completions" --data-binary @"$DIR/long1.json" > /dev/null &
p1=$!
for i in $(seq 100); do [ "$(active)" = 1 ] && break; sleep 0.02; done
curl -s "$URL/v1/chat/completions" --data-binary @"$DIR/long1.json" > /dev/null &
p2=$!
for i in $(seq 100); do [ "$(curl -s "$URL/metrics" | sed -n 's/^vl2_daemon_queue_depth //p')" = 1 ] && break; sleep 0.02; done
st=$(curl -s -D "$DIR/headers" -o "$DIR/out" -w '%{http_code}' "$URL/v1/chat/completions" --data-binary @"$DIR/text.json")
check "queue full: 429 with Retry-After" bash -c '[ "$1" = 429 ] && grep -qi "^retry-after:" "$2"' _ "$st" "$DIR/headers"
check "queue full: rate_limit_error" jq -e '.error.type == "rate_limit_error"' "$DIR/out"
kill "$p1" "$p2" 2>/dev/null; wait "$p1" "$p2" 2>/dev/null
kill "$DPID"; wait "$DPID" 2>/dev/null; DPID=
check "daemon gone: /health 503" test "$(curl -s -o /dev/null -w '%{http_code}' "$URL/health")" = 503
check "daemon gone: chat 503 with an error object" \
    bash -c '[ "$(curl -s -o "$1" -w "%{http_code}" "$2/v1/chat/completions" --data-binary @"$3")" = 503 ] && jq -e .error.message "$1" >/dev/null' _ "$DIR/out" "$URL" "$DIR/text.json"
check "vl2-http survived everything" kill -0 "$HPID"
kill "$HPID"; wait "$HPID"; rc=$?
HPID=
check "SIGTERM: vl2-http exits 0" test "$rc" = 0

summary
