// The shim is executed on every container start (`start`, and `delete`
// after a lost shim): linked as a position-dependent executable it needs no
// load-time relocation. As a PIE, its 78,000 relative relocations had the
// loader write 1.3 MB of .data.rel.ro and .got on every exec: 451 page
// faults and about 5 ms per exec against 109 and 2 ms. Go's shims (runc's
// among them) are position-dependent by default too; libraries and the
// stack stay randomized.
//
// containerd runs shims with LD_LIBRARY_PATH set to its opt directory's
// lib and an empty entry (the bundle): the loader looked for each of the
// shim's four libraries in both, in every hardware-capability subdirectory,
// before its cache: 99 failed opens, 0.35 ms of cpu and 0.4 ms of every
// `start` and `delete`. A DT_RPATH (searched before LD_LIBRARY_PATH,
// unlike DT_RUNPATH) naming the directories the system's loader cache has
// them in finds them first (19 failed opens). A directory missing where the
// binary runs is skipped after one look.
//
// The workspace's own build (.cargo/config.toml) links statically, with
// neither loader nor libraries: the DT_RPATH is then left out, and
// `-no-pie` says what rustc's static relocation model asks anyway.
use std::process::Command;

/// The shared libraries the shim links against.
const LIBRARIES: [&str; 4] = ["libc.so.6", "libm.so.6", "libgcc_s.so.1", "libseccomp.so.2"];

fn main() {
    println!("cargo:rustc-link-arg-bins=-no-pie");
    let static_crt = std::env::var("CARGO_CFG_TARGET_FEATURE").is_ok_and(|f| f.split(',').any(|f| f == "crt-static"));
    if static_crt {
        return;
    }
    if let Some(dirs) = library_dirs() {
        println!("cargo:rustc-link-arg-bins=-Wl,--disable-new-dtags,-rpath,{}", dirs.join(":"));
    }
}

/// The directories of LIBRARIES for the target's architecture, as the
/// loader cache (`ldconfig -p`) lists them; None when the build is not for
/// this machine or any is not found.
fn library_dirs() -> Option<Vec<String>> {
    if std::env::var("TARGET").ok()? != std::env::var("HOST").ok()? {
        return None;
    }
    let arch_tag = match std::env::var("CARGO_CFG_TARGET_ARCH").ok()?.as_str() {
        "x86_64" => "x86-64",
        "aarch64" => "AArch64",
        _ => return None,
    };
    let listing = ["ldconfig", "/sbin/ldconfig", "/usr/sbin/ldconfig"]
        .iter()
        .find_map(|ldconfig| Command::new(ldconfig).arg("-p").output().ok().filter(|o| o.status.success()))?;
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    let mut dirs: Vec<String> = Vec::new();
    for library in LIBRARIES {
        // "\tlibc.so.6 (libc6,x86-64) => /lib/x86_64-linux-gnu/libc.so.6"
        let path = listing.lines().find_map(|line| {
            let (name_and_tags, path) = line.trim().split_once(" => ")?;
            let (name, tags) = name_and_tags.split_once(' ')?;
            (name == library && tags.contains(arch_tag)).then(|| path.trim().to_string())
        })?;
        let dir = std::path::Path::new(&path).parent()?.to_str()?.to_string();
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    Some(dirs)
}
