/*
 * c-hello: a WASI preview1 command written in C (wasi-libc).
 *
 * Build (Debian: clang, lld, wasi-libc, libclang-rt-14-dev-wasm32):
 *
 *     clang --target=wasm32-wasi -O2 hello.c -o hello.wasm
 *
 * Prints "hello from c" and one line "args: ..." with argv[1..], exits 0.
 * Arguments of the form `write:PATH:TEXT` and `read:PATH` also write TEXT
 * to PATH and print PATH's content, one line each ("write PATH: ok" or
 * "write PATH: <error>"): the tests use them to see what the guest can
 * reach and change in its container.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

static void do_write(char *spec) {
    char *text = strchr(spec, ':');
    if (text == NULL) {
        printf("write %s: no :TEXT\n", spec);
        return;
    }
    *text++ = '\0';
    FILE *f = fopen(spec, "w");
    if (f == NULL || fputs(text, f) < 0 || fclose(f) != 0) {
        printf("write %s: %s\n", spec, strerror(errno));
        return;
    }
    printf("write %s: ok\n", spec);
}

static void do_read(const char *path) {
    char buf[256];
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        printf("read %s: %s\n", path, strerror(errno));
        return;
    }
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    printf("read %s: %s\n", path, buf);
}

int main(int argc, char **argv) {
    printf("hello from c\n");
    printf("args:");
    for (int i = 1; i < argc; i++) {
        printf(" %s", argv[i]);
    }
    printf("\n");
    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], "write:", 6) == 0) {
            do_write(argv[i] + 6);
        } else if (strncmp(argv[i], "read:", 5) == 0) {
            do_read(argv[i] + 5);
        }
    }
    return 0;
}
