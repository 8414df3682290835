;; memory-bomb: grows its linear memory 1 MiB at a time, touching each new
;; MiB, until the sandbox refuses; then traps. Under a container memory
;; limit hybrid ends it with 137 and a TaskOOM event (CRI: OOMKilled).
(module
  (memory (export "memory") 1)
  (func (export "_start")
    (local $page i32)
    (loop $grow
      (local.set $page (memory.grow (i32.const 16)))
      (if (i32.eq (local.get $page) (i32.const -1)) (then unreachable))
      (i32.store8 (i32.mul (local.get $page) (i32.const 65536)) (i32.const 1))
      (br $grow))))
