/* tests/gpu/mock/mock.h - the log of the fake CUDA runtime (mockrt.cpp), used by
 * the generated kernel stubs. */
#pragma once
#include <stddef.h>
void mock_begin(const char *name);
void mock_bytes(const char *what, const void *p, size_t n);
void mock_end(void);
