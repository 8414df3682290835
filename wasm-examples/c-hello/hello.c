/*
 * c-hello: a WASI preview1 command written in C (wasi-libc).
 *
 * Build (Debian: clang, lld, wasi-libc, libclang-rt-14-dev-wasm32):
 *
 *     clang --target=wasm32-wasi -O2 hello.c -o hello.wasm
 *
 * Prints "hello from c" and one line "args: ..." with argv[1..], exits 0.
 */
#include <stdio.h>

int main(int argc, char **argv) {
    printf("hello from c\n");
    printf("args:");
    for (int i = 1; i < argc; i++) {
        printf(" %s", argv[i]);
    }
    printf("\n");
    return 0;
}
