/* tcheck.h - what the tokenizer tests share: CHECK (a failed check prints
 * where and what, counts in `failures`, and the test goes on) and
 * ../common/util.h. */
#ifndef VL2_TEST_TOKENIZER_CHECK_H
#define VL2_TEST_TOKENIZER_CHECK_H

#include <stdio.h>
#include <stdlib.h>

#include "../common/util.h"

static int failures;

#define CHECK(cond, ...)                                            \
    do {                                                            \
        if (!(cond)) {                                              \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);    \
            fprintf(stderr, __VA_ARGS__);                           \
            fprintf(stderr, "\n");                                  \
            failures++;                                             \
        }                                                           \
    } while (0)

#endif
