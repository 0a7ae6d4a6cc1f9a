// sdk.mjs - the official `openai` and `ollama` npm libraries against
// vl2-http in front of vl2d on the golden micro-mha checkpoint.  Expected
// answers: tests/data/golden/micro-mha/<case>/generated.json (greedy, 12
// tokens) and input_ids.json.  Prints one line per check and
// "N passed, N failed"; exits 1 on any failure.
import { readFileSync } from 'node:fs';
import OpenAI from 'openai';
import { Ollama } from 'ollama';

const url = process.env.VL2_HTTP_URL;
const goldenDir = process.env.VL2_GOLDEN;
const images = process.env.VL2_IMAGES;
const golden = (c) => JSON.parse(readFileSync(`${goldenDir}/${c}/generated.json`, 'utf8'));
const goldenIds = (c) => JSON.parse(readFileSync(`${goldenDir}/${c}/input_ids.json`, 'utf8'));
const b64 = (f) => readFileSync(`${images}/${f}`).toString('base64');
const a384 = golden('a384');
const textonly = golden('textonly');

let passed = 0;
let failed = 0;
function check(what, cond, detail = '') {
    if (cond) {
        passed++;
        console.log(`ok: ${what}`);
    } else {
        failed++;
        console.log(`FAIL: ${what} ${detail}`);
    }
}
async function metric(name) {
    const text = await (await fetch(`${url}/metrics`)).text();
    const m = text.match(new RegExp(`^${name} (\\S+)$`, 'm'));
    return m ? Number(m[1]) : NaN;
}
async function waitFor(pred, ms = 5000) {
    const end = Date.now() + ms;
    while (Date.now() < end) {
        if (await pred()) return true;
        await new Promise((r) => setTimeout(r, 20));
    }
    return false;
}

const imagePart = (f, mime = 'image/jpeg') =>
    ({ type: 'image_url', image_url: { url: `data:${mime};base64,${b64(f)}` } });
const describe = [{ role: 'user', content: [imagePart('g_a_384.jpg'), { type: 'text', text: 'Describe this image.' }] }];

// ---- OpenAI -------------------------------------------------------------------
const openai = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused', maxRetries: 0 });

{
    const r = await openai.chat.completions.create({ model: 'micro', messages: describe, max_tokens: 12, temperature: 0 });
    check('openai: non-streamed a384 is the golden text', r.choices[0].message.content === a384.text,
          JSON.stringify(r.choices[0].message.content));
    check('openai: usage has the golden prompt length', r.usage.prompt_tokens === a384.prompt_len &&
          r.usage.completion_tokens === 12, JSON.stringify(r.usage));
    check('openai: finish_reason length', r.choices[0].finish_reason === 'length');
    check('openai: grounding boxes beside the text', Array.isArray(r.choices[0].message.boxes));
}
{
    const stream = await openai.chat.completions.create({
        model: 'micro', messages: describe, max_completion_tokens: 12, temperature: 0,
        stream: true, stream_options: { include_usage: true },
    });
    let text = '';
    let role = null;
    let finish = null;
    let usage = null;
    let chunks = 0;
    for await (const chunk of stream) {
        chunks++;
        if (chunk.usage) usage = chunk.usage;
        for (const c of chunk.choices) {
            if (c.delta.role) role = c.delta.role;
            if (c.delta.content) text += c.delta.content;
            if (c.finish_reason) finish = c.finish_reason;
        }
    }
    check('openai: streamed deltas are the golden text', text === a384.text, JSON.stringify(text));
    check('openai: stream role, finish_reason, usage', role === 'assistant' && finish === 'length' &&
          usage && usage.prompt_tokens === a384.prompt_len && usage.completion_tokens === 12,
          JSON.stringify({ role, finish, usage }));
    check('openai: one chunk per token plus role, final and usage chunks', chunks >= 15, `${chunks}`);
}
{
    const r = await openai.chat.completions.create({
        model: 'micro', temperature: 0, max_tokens: 12,
        messages: [{ role: 'system', content: '' },
                   { role: 'user', content: 'Write a haiku about GPUs.' }],
    });
    // an empty system prompt is what the golden prompts use (official format, system "")
    check('openai: textonly with an empty system message is the golden text',
          r.choices[0].message.content === textonly.text, JSON.stringify(r.choices[0].message.content));
}
{
    const wide = goldenIds('wide').num_image_tokens[0];
    const r = await openai.chat.completions.create({
        model: 'micro', temperature: 0, max_tokens: 2,
        messages: [{ role: 'user', content: [imagePart('g_a_384.jpg'), imagePart('g_b_wide.png', 'image/png'),
                                              { type: 'text', text: 'Describe this image.' }] }],
    });
    check('openai: two images: golden a384 prompt + wide image tokens + one "\\n"',
          r.usage.prompt_tokens === a384.prompt_len + wide + 1, JSON.stringify(r.usage));
}
{
    const r = await openai.chat.completions.create({ model: 'micro', messages: describe, max_tokens: 12,
                                                      temperature: 0, logprobs: true, top_logprobs: 4 });
    const lp = r.choices[0].logprobs.content;
    check('openai: logprobs: 12 tokens spelling the golden text',
          lp.length === 12 && lp.map((t) => t.token).join('') === a384.text && lp.every((t) => t.logprob <= 0));
    // greedy: 4 alternatives each, sorted, the first the chosen token
    const topOk = (t) => t.top_logprobs.length === 4 && t.top_logprobs[0].token === t.token &&
        t.top_logprobs[0].logprob === t.logprob &&
        JSON.stringify(t.top_logprobs[0].bytes) === JSON.stringify(t.bytes) &&
        t.top_logprobs.every((a, i) => a.logprob <= 0 && Array.isArray(a.bytes) &&
                                       (i === 0 || a.logprob <= t.top_logprobs[i - 1].logprob)) &&
        t.top_logprobs.reduce((s, a) => s + Math.exp(a.logprob), 0) <= 1 + 1e-5;
    check('openai: top_logprobs 4: sorted alternatives, the first the chosen token', lp.every(topOk),
          JSON.stringify(lp[0]));
    const stream = await openai.chat.completions.create({ model: 'micro', messages: describe, max_tokens: 12,
                                                           temperature: 0, logprobs: true, top_logprobs: 4,
                                                           stream: true });
    const slp = [];
    for await (const c of stream)
        for (const t of c.choices[0]?.logprobs?.content ?? []) slp.push(t);
    check('openai: streamed top_logprobs 4: the same tokens and alternatives',
          slp.length === 12 && slp.every(topOk) && JSON.stringify(slp) === JSON.stringify(lp),
          JSON.stringify(slp[0]));
}
async function expectStatus(what, status, body) {
    try {
        await openai.chat.completions.create(body);
        check(what, false, 'no error');
    } catch (e) {
        check(what, e instanceof OpenAI.APIError && e.status === status && typeof e.message === 'string',
              `${e.status} ${e.message}`);
    }
}
await expectStatus('openai: remote image URL -> BadRequestError 400', 400, {
    model: 'micro', messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'https://example.com/x.png' } }] }] });
await expectStatus('openai: unknown model -> NotFoundError 404', 404, { model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }] });
await expectStatus('openai: n = 2 -> 400', 400, { model: 'micro', n: 2, messages: [{ role: 'user', content: 'hi' }] });
await expectStatus('openai: bad temperature -> 400', 400, { model: 'micro', temperature: -1, messages: [{ role: 'user', content: 'hi' }] });
{
    const models = await openai.models.list();
    const ids = [];
    for await (const m of models) ids.push(m.id);
    check('openai: models.list gives micro', ids.includes('micro'), JSON.stringify(ids));
}
{
    // a client that aborts cancels its generation at vl2d's next step
    const before = await metric('vl2_http_client_disconnects_total');
    const stream = await openai.chat.completions.create({
        model: 'micro', temperature: 0, max_tokens: 4000, stream: true,
        messages: [{ role: 'user', content: 'Write a haiku about GPUs.' }] });
    let n = 0;
    for await (const chunk of stream) {
        if (chunk.choices[0]?.delta?.content && ++n === 3) break;   // break aborts the request
    }
    check('openai: aborted stream: vl2d stops decoding',
          await waitFor(async () => (await metric('vl2_daemon_active_sequences')) === 0));
    check('openai: aborted stream: counted as a disconnect',
          await waitFor(async () => (await metric('vl2_http_client_disconnects_total')) === before + 1));
}

// ---- Ollama -------------------------------------------------------------------
const ollama = new Ollama({ host: url });
{
    const r = await ollama.chat({ model: 'micro', stream: false, options: { temperature: 0, num_predict: 12 },
                                  messages: [{ role: 'user', content: 'Describe this image.', images: [b64('g_a_384.jpg')] }] });
    check('ollama: chat (base64 image) is the golden text', r.message.content === a384.text, JSON.stringify(r.message));
    check('ollama: counts and durations', r.done && r.prompt_eval_count === a384.prompt_len && r.eval_count === 12 &&
          r.total_duration > 0 && r.eval_duration > 0, JSON.stringify(r));
}
{
    const img = new Uint8Array(readFileSync(`${images}/g_a_384.jpg`));
    const parts = await ollama.chat({ model: 'micro', stream: true, options: { temperature: 0, num_predict: 12 },
                                      messages: [{ role: 'user', content: 'Describe this image.', images: [img] }] });
    let text = '';
    let last = null;
    for await (const p of parts) {
        text += p.message.content;
        last = p;
    }
    check('ollama: streamed chat (Uint8Array image) is the golden text', text === a384.text, JSON.stringify(text));
    check('ollama: final part done with done_reason length', last.done && last.done_reason === 'length');
}
{
    const r = await ollama.generate({ model: 'micro', prompt: 'Write a haiku about GPUs.', stream: false,
                                      options: { temperature: 0, num_predict: 12 } });
    check('ollama: generate textonly is the golden text', r.response === textonly.text, JSON.stringify(r.response));
}
{
    const list = await ollama.list();
    check('ollama: list gives micro', list.models.some((m) => m.name === 'micro'));
    const show = await ollama.show({ model: 'micro' });
    check('ollama: show has the vision capability', show.capabilities.includes('vision'));
    const v = await ollama.version();
    check('ollama: version', typeof v.version === 'string');
}
try {
    await ollama.chat({ model: 'llava', messages: [{ role: 'user', content: 'hi' }], stream: false });
    check('ollama: unknown model -> ResponseError 404', false, 'no error');
} catch (e) {
    check('ollama: unknown model -> ResponseError 404', e.status_code === 404 && /not found/.test(e.error), `${e.status_code} ${e.error}`);
}
try {
    await ollama.chat({ model: 'micro', messages: [{ role: 'user', content: 'hi', images: ['%%%'] }], stream: false });
    check('ollama: bad image -> 400', false, 'no error');
} catch (e) {
    check('ollama: bad image -> 400', e.status_code === 400, `${e.status_code} ${e.error}`);
}
{
    const before = await metric('vl2_http_client_disconnects_total');
    const parts = await ollama.chat({ model: 'micro', stream: true, options: { num_predict: 4000 },
                                      messages: [{ role: 'user', content: 'Write a haiku about GPUs.' }] });
    let n = 0;
    try {
        for await (const p of parts) {
            if (++n === 3) parts.abort();
        }
    } catch (e) {
        // AbortError: expected
    }
    check('ollama: aborted stream: vl2d stops decoding',
          await waitFor(async () => (await metric('vl2_daemon_active_sequences')) === 0));
    check('ollama: aborted stream: counted as a disconnect',
          await waitFor(async () => (await metric('vl2_http_client_disconnects_total')) === before + 1));
}

console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
