/* fuzz-frame.c - libFuzzer target for the daemon's input path: the byte
 * stream a client sends, cut into frames by the ipc reader (in chunks whose
 * sizes the input also chooses), each frame decoded as a Request and, for
 * the other direction, as a Response.  Built with -Dfuzz=true under clang. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "ipc.h"

/* A small limit, so that oversize lengths are reachable. */
#define FUZZ_MAX_FRAME 4096

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct vl2_ipc_reader r;
    size_t pos = 0;
    uint8_t chunk_seed;

    if (size < 1)
        return 0;
    chunk_seed = data[0];
    data++;
    size--;
    vl2_ipc_reader_init(&r, FUZZ_MAX_FRAME);
    while (pos < size) {
        uint8_t *p = NULL;
        size_t want = vl2_ipc_reader_want(&r, &p);
        size_t chunk = 1 + (size_t) ((chunk_seed + pos) % 97);
        int rc;

        if (want == 0)
            break;
        if (chunk > want)
            chunk = want;
        if (chunk > size - pos)
            chunk = size - pos;
        memcpy(p, data + pos, chunk);
        pos += chunk;
        rc = vl2_ipc_reader_advance(&r, chunk, NULL);
        if (rc < 0)
            break;
        if (rc == VL2_IPC_FRAME) {
            struct vl2_ipc_frame f = { 0 };
            Vl2__Request *req;
            Vl2__Response *resp;

            vl2_ipc_reader_take(&r, &f);
            if (f.size == 0 || f.size > FUZZ_MAX_FRAME)
                __builtin_trap();
            req = vl2_ipc_request_decode(f.payload, f.size, NULL);
            if (req) {
                /* what dispatch reads: the names of bodies, nested images */
                (void) vl2_ipc_request_name(req->body_case);
                if (req->body_case == VL2__REQUEST__BODY_GENERATE) {
                    size_t i, j, n = 0;

                    for (i = 0; i < req->generate->n_messages; i++)
                        for (j = 0; j < req->generate->messages[i]->n_images; j++)
                            n += req->generate->messages[i]->images[j]->data.len;
                    (void) n;
                }
                vl2__request__free_unpacked(req, NULL);
            }
            resp = vl2_ipc_response_decode(f.payload, f.size, NULL);
            if (resp)
                vl2__response__free_unpacked(resp, NULL);
            vl2_ipc_frame_done(&f);
        }
    }
    vl2_ipc_reader_done(&r);
    return 0;
}
