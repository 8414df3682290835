;; sleep-wat: a long-running WASI preview1 command, for testing `ctr task kill`.
;;
;; Prints a line, then blocks for 60 seconds in poll_oneoff on a single
;; relative CLOCK_MONOTONIC subscription, prints a second line and exits 0.
;; If poll_oneoff fails it prints a message and exits 1.
;; The hybrid runtime loads this .wat text directly; scripts/build-examples.sh
;; also compiles it to sleep.wasm with wabt's wat2wasm for the image.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit"
    (func $proc_exit (param i32)))

  (memory (export "memory") 1)

  ;; Memory layout:
  ;;   0   iovec scratch { buf: u32, buf_len: u32 }
  ;;   8   nwritten (u32)
  ;;   12  nevents  (u32)
  ;;   64  subscription (48 bytes):
  ;;         +0 userdata u64, +8 tag u8 (0 = clock),
  ;;         +16 clock id u32, +24 timeout u64 (ns), +32 precision u64,
  ;;         +40 flags u16 (0 = relative, 1 = subscription_clock_abstime)
  ;;   128 event (32 bytes): +0 userdata u64, +8 error u16, +10 type u8
  ;;   256 strings
  (global $SECONDS i64 (i64.const 60))
  (global $CLOCK_MONOTONIC i32 (i32.const 1))

  (data (i32.const 256) "sleep-wat: sleeping 60s\n")       ;; 24 bytes
  (data (i32.const 288) "sleep-wat: woke up\n")            ;; 19 bytes
  (data (i32.const 320) "sleep-wat: poll_oneoff failed\n") ;; 30 bytes

  ;; Write len bytes at ptr to stdout.
  (func $print (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))

  (func $fail
    (call $print (i32.const 320) (i32.const 30))
    (call $proc_exit (i32.const 1))
    unreachable)

  (func $main (export "_start")
    (call $print (i32.const 256) (i32.const 24))

    ;; Build the clock subscription.
    (i64.store (i32.const 64) (i64.const 0x51))                 ;; userdata
    (i32.store8 (i32.const 72) (i32.const 0))                   ;; tag = clock
    (i32.store (i32.const 80) (global.get $CLOCK_MONOTONIC))    ;; id
    (i64.store (i32.const 88)                                   ;; timeout ns
      (i64.mul (global.get $SECONDS) (i64.const 1000000000)))
    (i64.store (i32.const 96) (i64.const 0))                    ;; precision
    (i32.store16 (i32.const 104) (i32.const 0))                 ;; flags: relative

    ;; poll_oneoff(in=64, out=128, nsubscriptions=1, nevents=12)
    (if (i32.ne
          (call $poll_oneoff (i32.const 64) (i32.const 128) (i32.const 1) (i32.const 12))
          (i32.const 0))
      (then (call $fail)))
    ;; Exactly one event, for our subscription, without error.
    (if (i32.ne (i32.load (i32.const 12)) (i32.const 1))
      (then (call $fail)))
    (if (i32.ne (i32.load16_u (i32.const 136)) (i32.const 0))
      (then (call $fail)))

    (call $print (i32.const 288) (i32.const 19))
    (call $proc_exit (i32.const 0))
    unreachable)
)
