//! Upper directory → layer: the whiteout and opaque conversions, by hand
//! and as the kernel's overlayfs makes them. Making whiteouts (mknod 0:0)
//! and trusted xattrs needs root; the tests say so and pass when not root.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use super::*;
use crate::basefs;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipped: needs root (whiteout devices, trusted xattrs, overlay mounts)");
    }
    root
}

fn whiteout_device(path: &Path) {
    nix::sys::stat::mknod(path, nix::sys::stat::SFlag::S_IFCHR, nix::sys::stat::Mode::empty(), 0).unwrap();
}

fn set_opaque(path: &Path) {
    let c_path = CString::new(path.as_os_str().as_bytes()).unwrap();
    let name = CString::new(OPAQUE_XATTR).unwrap();
    // SAFETY: NUL-terminated strings and a 1-byte value that outlive the call.
    let rc = unsafe { libc::lsetxattr(c_path.as_ptr(), name.as_ptr(), b"y".as_ptr().cast(), 1, 0) };
    assert_eq!(rc, 0, "lsetxattr: {}", io::Error::last_os_error());
}

/// (path, type, mode, uid, content or link target)
type Listed = (String, char, u32, u64, String);

/// The layer's entries in order.
fn entries(upper: &Path, lower: Option<&Path>) -> (Vec<Listed>, Changes) {
    let blobs = BlobStore::temp().unwrap();
    let (blob, changes) = write_layer(upper, lower, &blobs, 7, Compression::None).unwrap();
    let data = blobs.read(&blob.digest).unwrap();
    assert_eq!(blob.diff_id, blob.digest, "uncompressed: digest is diff_id");
    let mut archive = tar::Archive::new(&data[..]);
    let list = archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let h = e.header().clone();
            assert_eq!(h.mtime().unwrap(), 7);
            let kind = match h.entry_type() {
                tar::EntryType::Directory => 'd',
                tar::EntryType::Symlink => 'l',
                tar::EntryType::Link => 'h',
                tar::EntryType::Fifo => 'p',
                _ => 'f',
            };
            let mut text = String::new();
            match e.link_name().unwrap() {
                Some(link) => text = link.display().to_string(),
                None => {
                    e.read_to_string(&mut text).unwrap();
                }
            }
            (e.path().unwrap().display().to_string(), kind, h.mode().unwrap(), h.uid().unwrap(), text)
        })
        .collect();
    (list, changes)
}

#[test]
fn whiteout_devices_and_opaque_dirs_become_oci_whiteouts() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let upper = dir.path();
    fs::create_dir_all(upper.join("etc")).unwrap();
    whiteout_device(&upper.join("etc/gone"));
    fs::write(upper.join("etc/new"), "new\n").unwrap();
    fs::create_dir(upper.join("opaque")).unwrap();
    set_opaque(&upper.join("opaque"));
    // Sorts before ".wh..wh..opq" by name, must still come after it.
    fs::write(upper.join("opaque/-first"), "x").unwrap();
    // chown clears set-uid: chown first.
    std::os::unix::fs::lchown(upper.join("etc/new"), Some(1000), Some(1000)).unwrap();
    fs::set_permissions(upper.join("etc/new"), fs::Permissions::from_mode(0o4751)).unwrap();
    std::os::unix::fs::symlink("../etc/new", upper.join("link")).unwrap();
    fs::hard_link(upper.join("etc/new"), upper.join("hard")).unwrap();
    fs::set_permissions(upper, fs::Permissions::from_mode(0o755)).unwrap();

    let (list, changes) = entries(upper, None);
    let brief: Vec<(&str, char)> = list.iter().map(|(p, k, ..)| (p.as_str(), *k)).collect();
    assert_eq!(
        brief,
        vec![
            ("etc/", 'd'),
            ("etc/.wh.gone", 'f'),
            ("etc/new", 'f'),
            ("hard", 'h'),
            ("link", 'l'),
            ("opaque/", 'd'),
            ("opaque/.wh..wh..opq", 'f'),
            ("opaque/-first", 'f'),
        ]
    );
    let new = &list[2];
    assert_eq!((new.2, new.3, new.4.as_str()), (0o4751, 1000, "new\n"), "mode, owner and content kept");
    assert_eq!(list[3].4, "etc/new", "the second name of a file is a hard link to the first");
    assert_eq!(list[4].4, "../etc/new");
    assert_eq!(changes.removed, vec!["etc/gone".to_string()]);
    assert_eq!(changes.dirs, vec!["etc".to_string(), "opaque".to_string()]);
}

/// Lower → overlay mount → changes → unmount → layer → applied to a copy
/// of lower: the result is what the mount showed.
#[test]
fn kernel_overlay_changes_apply_as_a_layer() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let [lower, upper, work, merged] = ["lower", "upper", "work", "merged"].map(|n| {
        let path = dir.path().join(n);
        fs::create_dir(&path).unwrap();
        path
    });
    fs::create_dir_all(lower.join("etc/conf.d")).unwrap();
    fs::write(lower.join("etc/conf.d/a"), "a").unwrap();
    fs::write(lower.join("etc/conf.d/b"), "b").unwrap();
    fs::write(lower.join("etc/gone"), "gone").unwrap();
    fs::write(lower.join("etc/mode"), "m").unwrap();
    let options = format!(
        "lowerdir={},upperdir={},workdir={},redirect_dir=off,metacopy=off,index=off",
        lower.display(),
        upper.display(),
        work.display()
    );
    if let Err(e) = nix::mount::mount(Some("overlay"), &merged, Some("overlay"), nix::mount::MsFlags::empty(), Some(options.as_str())) {
        eprintln!("skipped: cannot mount overlay here: {e}");
        return;
    }
    let changed = std::panic::catch_unwind(|| {
        fs::remove_file(merged.join("etc/gone")).unwrap();
        fs::remove_dir_all(merged.join("etc/conf.d")).unwrap();
        fs::create_dir(merged.join("etc/conf.d")).unwrap();
        fs::write(merged.join("etc/conf.d/c"), "c").unwrap();
        fs::set_permissions(merged.join("etc/mode"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(merged.join("new"), "n").unwrap();
    });
    nix::mount::umount2(&merged, nix::mount::MntFlags::MNT_DETACH).unwrap();
    changed.unwrap();

    let (list, _) = entries(&upper, Some(&lower));
    let names: Vec<&str> = list.iter().map(|(p, ..)| p.as_str()).collect();
    assert!(names.contains(&"etc/.wh.gone"), "{names:?}");
    assert!(names.contains(&"etc/conf.d/.wh..wh..opq"), "{names:?}");
    assert!(!names.contains(&"etc/"), "a directory only copied up is left out: {names:?}");

    // Apply the layer onto a copy of lower, as a reader of the image would.
    let blobs = BlobStore::temp().unwrap();
    let (blob, _) = write_layer(&upper, Some(&lower), &blobs, 0, Compression::Gzip).unwrap();
    let applied = dir.path().join("applied");
    fs::create_dir(&applied).unwrap();
    basefs::unpack(lower_as_tar(&lower).as_slice(), &applied).unwrap();
    let layer = basefs::decompress(blobs.open(&blob.digest).unwrap()).unwrap();
    basefs::unpack(layer, &applied).unwrap();
    let tree = |root: &Path| -> BTreeMap<String, (u32, Vec<u8>)> {
        let mut out = BTreeMap::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let meta = fs::symlink_metadata(&p).unwrap();
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                let data = if meta.is_file() { fs::read(&p).unwrap() } else { Vec::new() };
                if meta.is_dir() {
                    stack.push(p);
                }
                out.insert(rel, (meta.mode() & 0o7777, data));
            }
        }
        out
    };
    let expected: Vec<&str> = vec!["etc", "etc/conf.d", "etc/conf.d/c", "etc/mode", "new"];
    let got = tree(&applied);
    assert_eq!(got.keys().map(String::as_str).collect::<Vec<_>>(), expected);
    assert_eq!(got["etc/mode"].0, 0o600);
    assert_eq!(got["etc/conf.d/c"].1, b"c");
}

fn lower_as_tar(lower: &Path) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.append_dir_all(".", lower).unwrap();
    builder.into_inner().unwrap()
}
