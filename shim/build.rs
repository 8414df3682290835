// The shim is executed on every container start (`start`, and `delete`
// after a lost shim): linked as a position-dependent executable it needs no
// load-time relocation. As a PIE, its 78,000 relative relocations had the
// loader write 1.3 MB of .data.rel.ro and .got on every exec: 451 page
// faults and about 5 ms per exec against 109 and 2 ms. Go's shims (runc's
// among them) are position-dependent by default too; libraries and the
// stack stay randomized.
fn main() {
    println!("cargo:rustc-link-arg-bins=-no-pie");
}
