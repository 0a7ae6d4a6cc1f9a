#!/bin/bash
# test-grounding.sh - grounding boxes beside the text, in both dialects:
# vl2-http in front of the fake daemon of tests/client, whose Done carries
# two boxes in pixels (fake-vl2d.c); the expected values are that script's.
#
# usage: test-grounding.sh FAKE_VL2D VL2HTTP IMAGES_DIR SRC_DIR
set -uo pipefail
FAKE=$1 VL2HTTP=$2 IMAGES=$3
for t in curl jq base64; do
    command -v $t >/dev/null || { echo "$t not found: skipping"; exit 77; }
done
. "$(dirname "$0")/lib.sh"

"$FAKE" "$SOCK" "$DIR/fake.log" > "$DIR/vl2d.log" 2>&1 &
DPID=$!
for i in $(seq 200); do [ -S "$SOCK" ] && break; sleep 0.05; done
NO_HEALTH=1 start_gateway "$VL2HTTP"

want='[{"label":"the giraffe","x1":580,"y1":162,"x2":1000,"y2":540,"image_index":0},
       {"label":"second","x1":10,"y1":6,"x2":100,"y2":120,"image_index":0}]'
text='<|ref|>the giraffe<|/ref|><|det|>[[580, 300, 999, 999]]<|/det|>'
b64=$(base64 -w0 "$IMAGES/g_a_384.jpg")
jq -nc --arg i "data:image/jpeg;base64,$b64" \
    '{model:"micro",messages:[{role:"user",content:[{type:"image_url",image_url:{url:$i}},
      {type:"text",text:"<|ref|>the giraffe<|/ref|>."}]}]}' > "$DIR/req.json"

curl -s "$URL/v1/chat/completions" --data-binary @"$DIR/req.json" > "$DIR/out"
check "openai: the text and the two boxes in pixels" \
    jq -e --argjson w "$want" --arg t "$text" \
       '.choices[0].message.content == $t and .choices[0].message.boxes == $w' "$DIR/out"
jq -c '.stream = true' "$DIR/req.json" > "$DIR/sreq.json"
curl -sN "$URL/v1/chat/completions" --data-binary @"$DIR/sreq.json" | sed -n 's/^data: //p' \
    | grep -v '^\[DONE\]$' > "$DIR/chunks"
check "openai stream: the boxes in the final chunk's delta" \
    bash -c 'tail -1 "$1" | jq -e --argjson w "$2" ".choices[0].delta.boxes == \$w and .choices[0].finish_reason != null"' _ "$DIR/chunks" "$want"
jq -c '.grounding = false' "$DIR/req.json" > "$DIR/noground.json"
curl -s "$URL/v1/chat/completions" --data-binary @"$DIR/noground.json" > "$DIR/out"
check "openai: grounding false: no boxes field" jq -e '.choices[0].message | has("boxes") | not' "$DIR/out"
check "the daemon was asked for grounding only when wanted" \
    bash -c '[ "$(grep -c "\"grounding\":true" "$1")" -ge 2 ] && grep -q "\"grounding\":false" "$1"' _ "$DIR/fake.log"

jq -nc --arg i "$b64" '{model:"micro",stream:false,messages:[{role:"user",content:"x",images:[$i]}]}' > "$DIR/o.json"
curl -s "$URL/api/chat" --data-binary @"$DIR/o.json" > "$DIR/out"
check "ollama chat: message.boxes" jq -e --argjson w "$want" '.message.boxes == $w' "$DIR/out"
jq -nc --arg i "$b64" '{model:"micro",prompt:"x",images:[$i]}' > "$DIR/g.json"
curl -sN "$URL/api/generate" --data-binary @"$DIR/g.json" > "$DIR/nd"
check "ollama generate stream: boxes in the final object" \
    bash -c 'tail -1 "$1" | jq -e --argjson w "$2" ".done and .boxes == \$w"' _ "$DIR/nd" "$want"
summary
