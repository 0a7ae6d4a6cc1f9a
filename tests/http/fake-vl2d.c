/* fake-vl2d.c - test helper: the fake daemon of tests/client answering every
 * Generate with a grounded answer and two boxes in Done (pixels), so the
 * boxes vl2-http puts beside the text can be checked against known values.
 * Runs until SIGTERM.
 *
 * usage: fake-vl2d SOCKET LOG */
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fake-daemon.h"

static const struct fake_script script = {
    .pieces = { "<|ref|>the giraffe<|/ref|>", "<|det|>[[580, 300, 999, 999]]<|/det|>" },
    .ids = { 1001, 1002 },
    .n_pieces = 2,
    .boxes = { { "the giraffe", 580, 162, 1000, 540 }, { "second", 10, 6, 100, 120 } },
    .n_boxes = 2,
};

static volatile sig_atomic_t stop;

static void on_term(int sig)
{
    (void) sig;
    stop = 1;
}

int main(int argc, char **argv)
{
    pid_t pid;

    if (argc != 3) {
        fprintf(stderr, "usage: fake-vl2d SOCKET LOG\n");
        return 2;
    }
    signal(SIGTERM, on_term);
    signal(SIGINT, on_term);
    pid = fake_daemon_start(argv[1], argv[2], &script);
    if (pid < 0) {
        fprintf(stderr, "fake-vl2d: cannot listen on '%s'\n", argv[1]);
        return 1;
    }
    while (!stop)
        pause();
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return 0;
}
