/* The smallest useful container process for tests that need a real container but not the
 * agent image: it waits until it is told to stop, and stops at once on SIGTERM (a shell as
 * PID 1 would ignore it and make every `docker stop` wait its full grace). */
#include <signal.h>
#include <unistd.h>

static void on_term(int sig) { (void)sig; _exit(0); }

int main(void) {
    signal(SIGTERM, on_term);
    signal(SIGINT, on_term);
    for (;;) pause();
}
