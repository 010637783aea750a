/* A C program the crash report tests crash: three calls deep, in functions the report must
 * name (or, stripped, give as module+offset).
 *
 * Protocol of the tests' crasher: prints `ready <host pid> <ns pid> <host tid>`, then waits
 * for a line on stdin before crashing. argv[1]: `segv` (crash3 ← crash2 ← crash1 writes
 * through NULL), `elsewhere` (another place: elsewhere ← other2), `abort` (abort() in crash3).
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The pid in the outermost pid namespace (NSpid's first number): /proc is the host's. */
static int host_pid(void) {
    char line[256];
    int pid = getpid();
    FILE *f = fopen("/proc/self/status", "r");
    while (f && fgets(line, sizeof line, f)) {
        if (strncmp(line, "NSpid:", 6) == 0) {
            pid = atoi(line + 6);
            break;
        }
    }
    if (f) fclose(f);
    return pid;
}

static int aborting;

__attribute__((noinline)) void crash3(volatile int *p) {
    if (aborting) abort();
    *p = 42;
}
__attribute__((noinline)) void crash2(volatile int *p) { crash3(p); puts("not reached"); }
__attribute__((noinline)) void crash1(volatile int *p) { crash2(p); puts("not reached"); }
__attribute__((noinline)) void elsewhere(volatile int *p) { p[1] = 7; }
__attribute__((noinline)) void other2(volatile int *p) { elsewhere(p); puts("not reached"); }

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "segv";
    printf("ready %d %d %d\n", host_pid(), getpid(), host_pid());
    fflush(stdout);
    char go[16];
    if (!fgets(go, sizeof go, stdin)) return 1;
    aborting = strcmp(mode, "abort") == 0;
    volatile int *nothing = NULL;
    if (strcmp(mode, "elsewhere") == 0) other2(nothing);
    else crash1(nothing);
    return 0;
}
