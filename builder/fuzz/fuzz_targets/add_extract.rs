//! ADD's tar extraction on arbitrary bytes (plain, gzip, xz or zstd): whatever it
//! accepts must stay inside the destination directory and write as a tar.
#![no_main]

use hybrid_builder::blobs::BlobStore;
use hybrid_builder::copy::{self, CopySpec};
use hybrid_builder::layer::LayerWriter;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else { return };
    let Ok(context) = dir.path().canonicalize() else { return };
    if std::fs::write(context.join("x.tar"), data).is_err() {
        return;
    }
    let Ok(blobs) = BlobStore::temp() else { return };
    let mut layer = LayerWriter::new(true);
    let sources = ["x.tar".to_string()];
    let spec = CopySpec {
        context: &context,
        sources: &sources,
        dest: "/opt/",
        workdir: "/",
        extract_archives: true,
        ignore: None,
        rootfs: false,
        staged: &[],
    };
    if copy::copy(&spec, &mut layer, &blobs, &mut |_| false).is_err() {
        return;
    }
    let Ok(tar) = layer.write_tar(Vec::new(), 0) else { return };
    let mut archive = tar::Archive::new(&tar[..]);
    for entry in archive.entries().expect("own tar") {
        let entry = entry.expect("own tar entry");
        let path = entry.path().expect("own tar path").display().to_string();
        assert!(path.starts_with("opt/") || path == "opt", "{path} escapes /opt");
    }
});
