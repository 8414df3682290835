;; exit-wat: the smallest useful WASI preview1 command.
;;
;; Writes one line to stdout with fd_write, then calls proc_exit(3), so a
;; runtime must report exit status 3 for the task.
;; The hybrid runtime loads this .wat text directly; scripts/build-examples.sh
;; also compiles it to exit.wasm with wabt's wat2wasm for the image.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit"
    (func $proc_exit (param i32)))

  (memory (export "memory") 1)

  ;; iovec { buf = 16, buf_len = 32 } at offset 0; nwritten at offset 8.
  (data (i32.const 0) "\10\00\00\00\20\00\00\00")
  ;; 32 bytes of text (including the newline) at offset 16.
  (data (i32.const 16) "exit-wat: exiting with status 3\n")

  (func $main (export "_start")
    ;; fd_write(fd=1 stdout, iovs=0, iovs_len=1, nwritten=8)
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (call $proc_exit (i32.const 3))
    unreachable)
)
