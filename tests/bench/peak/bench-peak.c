/* bench-peak.c - print this machine's measured compute peak (peak.h).
 *
 *   bench-peak [--threads N] [--seconds S]
 *
 * N defaults to the online processors.  Figures only; never pass/fail.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "peak.h"

int main(int argc, char **argv)
{
    struct vl2_peak p;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    double sec = 0.3;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
            n = strtol(argv[++i], NULL, 10);
        } else if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc) {
            sec = strtod(argv[++i], NULL);
        } else {
            fprintf(stderr, "usage: %s [--threads N] [--seconds S]\n", argv[0]);
            return 2;
        }
    }
    if (n < 1 || n > 1024) {
        fprintf(stderr, "bench-peak: threads %ld: expected 1..1024\n", n);
        return 2;
    }
    if (vl2_peak_measure(&p, (int)n, sec) < 0) {
        fprintf(stderr, "bench-peak: cannot start %ld threads\n", n);
        return 1;
    }
    vl2_peak_print(&p);
    return 0;
}
