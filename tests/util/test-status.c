/* test-status.c - plugins/vl2-status.h: vl2_err_set and vl2_err_prefix keep
 * the callee's code whether or not the caller passed an error record (a NULL
 * err used to come back as INTERNAL), prefix the message, and cut long text
 * without losing the terminator. */
#include <string.h>

#include "../common/check.h"
#include "vl2-status.h"

/* A callee that fails the way the runtime does, and a caller that adds its
 * context the way model.c, prep.c and the CLI do. */
static int callee(int code, struct vl2_err *err)
{
    return vl2_err_set(err, code, "out of %s", "memory");
}

static int caller(int code, struct vl2_err *err)
{
    int r = callee(code, err);

    if (r < 0)
        return vl2_err_prefix(err, r, "model: allocating activations");
    return r;
}

static void test_code_kept(void)
{
    static const int codes[] = { VL2_ENOMEM, VL2_EINVAL, VL2_ELIMIT, VL2_EBACKEND,
                                 VL2_ECANCELED };
    struct vl2_err err;

    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
        /* NULL err: the API allows it, and the code must survive */
        CHECK_EQ_INT(caller(codes[i], NULL), codes[i]);
        memset(&err, 0, sizeof(err));
        CHECK_EQ_INT(caller(codes[i], &err), codes[i]);
        CHECK_EQ_INT(err.code, codes[i]);
        CHECK_MSG(!strcmp(err.msg, "model: allocating activations: out of memory"), "'%s'",
                  err.msg);
    }
    /* success passes through untouched */
    memset(&err, 0, sizeof(err));
    CHECK_EQ_INT(vl2_err_prefix(&err, 3, "ctx"), 3);
    CHECK(err.code == 0 && err.msg[0] == '\0');
    CHECK_EQ_INT(vl2_err_prefix(NULL, 0, "ctx"), 0);
}

static void test_empty_record(void)
{
    struct vl2_err err = { 0 };

    /* a callee that returned a code without a message: the context alone */
    CHECK_EQ_INT(vl2_err_prefix(&err, VL2_EIO, "weights: 'x'"), VL2_EIO);
    CHECK_EQ_INT(err.code, VL2_EIO);
    CHECK(!strcmp(err.msg, "weights: 'x'"));
}

static void test_long(void)
{
    char ctx[2 * VL2_ERR_MSG_SIZE];
    struct vl2_err err;

    memset(ctx, 'c', sizeof(ctx) - 1);
    ctx[sizeof(ctx) - 1] = '\0';
    vl2_err_set(&err, VL2_EFORMAT, "%0*d", VL2_ERR_MSG_SIZE - 1, 7);   /* a full message */
    CHECK_EQ_INT(vl2_err_prefix(&err, VL2_EFORMAT, ctx), VL2_EFORMAT);
    CHECK_EQ_INT(strlen(err.msg), VL2_ERR_MSG_SIZE - 1);
    CHECK(err.msg[VL2_ERR_MSG_SIZE / 2] == ':' && err.msg[VL2_ERR_MSG_SIZE / 2 + 1] == ' ');
    CHECK(err.msg[VL2_ERR_MSG_SIZE / 2 + 2] == '0');
    /* a short context before a full message: the message's end is cut */
    vl2_err_set(&err, VL2_EFORMAT, "%0*d", VL2_ERR_MSG_SIZE - 1, 7);
    vl2_err_prefix(&err, VL2_EFORMAT, "p");
    CHECK(!strncmp(err.msg, "p: 000", 6) && strlen(err.msg) == VL2_ERR_MSG_SIZE - 1);
}

int main(void)
{
    RUN(test_code_kept);
    RUN(test_empty_record);
    RUN(test_long);
    return check_failures ? 1 : 0;
}
