/* The sandbox ("pause") process of every pod on the local cluster's node: it holds the pod's
 * namespaces and does nothing else. PID 1 of the sandbox: it exits on SIGINT/SIGTERM and reaps the
 * zombies it inherits. Built with `gcc -static` by scripts/cluster and pushed as a FROM-scratch image. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void quit(int sig) { (void)sig; _exit(0); }

static void reap(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(void) {
    struct sigaction stop = {.sa_handler = quit}, child = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP};
    sigaction(SIGINT, &stop, NULL);
    sigaction(SIGTERM, &stop, NULL);
    sigaction(SIGCHLD, &child, NULL);
    for (;;) pause();
    return 0;
}
