//! End-to-end tests of `build` into OCI archives (no containerd needed).

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use oci_spec::image::{ImageConfiguration, ImageManifest};
use sha2::{Digest as _, Sha256};

use super::*;

pub(crate) fn write(dir: &Path, name: &str, data: &[u8]) {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

pub(crate) fn options(context: &Path, out: &Path) -> BuildOptions {
    let mut options = BuildOptions::new(context.to_path_buf(), "test:latest".into());
    options.output = Some(out.to_path_buf());
    options
}

pub(crate) fn archive_path(context: &Path) -> std::path::PathBuf {
    context.parent().unwrap().join(format!("{}.tar", context.file_name().unwrap().to_string_lossy()))
}

pub(crate) async fn build_context(context: &Path) -> Result<(ImageInfo, std::path::PathBuf), BuildError> {
    let out = archive_path(context);
    build(&options(context, &out)).await.map(|info| (info, out))
}

/// An archive's manifest, config and layers (path → (mode, content or link)).
pub(crate) struct Archived {
    pub manifest: ImageManifest,
    pub config: ImageConfiguration,
    pub raw_config: serde_json::Value,
    pub layers: Vec<BTreeMap<String, (u32, String)>>,
    /// path → (uid, gid), per layer.
    pub owners: Vec<BTreeMap<String, (u64, u64)>>,
    pub diff_ids: Vec<String>,
}

pub(crate) fn read_archive(path: &Path) -> Archived {
    let blobs = BlobStore::temp().unwrap();
    let index = archive::read(path, &blobs).unwrap();
    let target = &index.manifests()[0];
    let annotations = target.annotations().clone().unwrap();
    assert_eq!(annotations[ANNOTATION_REF_NAME], "latest");
    assert_eq!(annotations[ANNOTATION_IMAGE_NAME], "docker.io/library/test:latest");
    let manifest: ImageManifest = serde_json::from_slice(&blobs.read(target.digest().as_ref()).unwrap()).unwrap();
    let raw = blobs.read(manifest.config().digest().as_ref()).unwrap();
    let config: ImageConfiguration = serde_json::from_slice(&raw).unwrap();
    let raw_config = serde_json::from_slice(&raw).unwrap();
    let mut layers = Vec::new();
    let mut owners = Vec::new();
    let mut diff_ids = Vec::new();
    for layer in manifest.layers() {
        let mut tar = Vec::new();
        let blob = blobs.open(layer.digest().as_ref()).unwrap();
        crate::basefs::decompress(blob).unwrap().read_to_end(&mut tar).unwrap();
        diff_ids.push(format!("sha256:{}", hex::encode(Sha256::digest(&tar))));
        let mut entries = BTreeMap::new();
        let mut owner = BTreeMap::new();
        for entry in tar::Archive::new(&tar[..]).entries().unwrap() {
            let mut entry = entry.unwrap();
            let header = entry.header().clone();
            assert!(matches!(header.mtime().unwrap(), 0 | 1_700_000_000), "SOURCE_DATE_EPOCH or 0");
            assert_eq!(header.username().unwrap(), Some(""));
            let path = entry.path().unwrap().display().to_string();
            owner.insert(path.clone(), (header.uid().unwrap(), header.gid().unwrap()));
            let content;
            if header.entry_type() == tar::EntryType::Symlink {
                content = format!("-> {}", entry.link_name().unwrap().unwrap().display());
            } else {
                let mut data = Vec::new();
                entry.read_to_end(&mut data).unwrap();
                content = String::from_utf8_lossy(&data).into_owned();
            }
            entries.insert(path, (header.mode().unwrap(), content));
        }
        layers.push(entries);
        owners.push(owner);
    }
    Archived { manifest, config, raw_config, layers, owners, diff_ids }
}

fn hello_context(root: &Path) {
    write(
        root,
        "Dockerfile",
        b"FROM scratch\nLABEL a=b \\\n  c=\"d e\"\nCOPY hello.wasm /hello.wasm\nCOPY data/ /data/\nWORKDIR /app\n\
          ENV GREETING=\"hi there\" OTHER=$GREETING\nENV LEGACY some value\nCOPY hello.wasm .\nEXPOSE 80 53/udp\n\
          VOLUME [\"/cache\"]\nENTRYPOINT [\"/hello.wasm\"]\nCMD echo $HOME\n",
    );
    write(root, "hello.wasm", b"\0asm\x01\0\0\0");
    std::fs::set_permissions(root.join("hello.wasm"), std::fs::Permissions::from_mode(0o755)).unwrap();
    write(root, "data/message.txt", b"hello");
    write(root, "data/sub/x", b"x");
}

#[tokio::test]
async fn same_inputs_give_the_same_digest() {
    let temp = tempfile::tempdir().unwrap();
    let (a, b) = (temp.path().join("a"), temp.path().join("b"));
    hello_context(&a);
    std::thread::sleep(std::time::Duration::from_millis(20));
    hello_context(&b);
    let (info_a, out_a) = build_context(&a).await.unwrap();
    let (info_b, out_b) = build_context(&b).await.unwrap();
    assert_eq!(info_a.digest, info_b.digest);
    assert!(info_a.digest.starts_with("sha256:"));
    assert_eq!(std::fs::read(out_a).unwrap(), std::fs::read(out_b).unwrap(), "archives are byte-identical");

    let mut opts = options(&a, &temp.path().join("later.tar"));
    opts.source_date_epoch = 1_700_000_000;
    assert_ne!(build(&opts).await.unwrap().digest, info_a.digest, "SOURCE_DATE_EPOCH changes the image");
}

#[tokio::test]
async fn config_and_layers_follow_the_dockerfile() {
    let temp = tempfile::tempdir().unwrap();
    let ctx = temp.path().join("ctx");
    hello_context(&ctx);
    let (info, out) = build_context(&ctx).await.unwrap();
    let image = read_archive(&out);
    assert_eq!(image.manifest.layers().len(), 3);
    assert!(info.digest.starts_with("sha256:"));
    let config = image.config.config().clone().unwrap();
    assert_eq!(image.config.created().as_deref(), Some("1970-01-01T00:00:00Z"));
    assert_eq!(image.config.architecture().to_string(), "amd64");
    assert_eq!(image.config.rootfs().diff_ids(), &image.diff_ids);
    assert_eq!(image.config.history().as_ref().unwrap().len(), 11);
    let env = config.env().clone().unwrap();
    assert!(env.contains(&crate::image::DEFAULT_PATH.to_string()));
    assert!(env.contains(&"GREETING=hi there".to_string()));
    assert!(env.contains(&"OTHER=".to_string()), "ENV values see the env from before: {env:?}");
    assert!(env.contains(&"LEGACY=some value".to_string()));
    assert_eq!(config.working_dir().as_deref(), Some("/app"));
    assert_eq!(config.entrypoint().clone().unwrap(), vec!["/hello.wasm"]);
    assert_eq!(config.cmd().clone().unwrap(), vec!["/bin/sh", "-c", "echo $HOME"]);
    assert_eq!(config.labels().clone().unwrap()["c"], "d e");
    let mut ports = config.exposed_ports().clone().unwrap();
    ports.sort();
    assert_eq!(ports, vec!["53/udp", "80/tcp"]);
    assert_eq!(config.volumes().clone().unwrap(), vec!["/cache"]);

    assert_eq!(image.layers.len(), 3);
    assert_eq!(image.layers[0]["hello.wasm"].0, 0o755, "mode preserved");
    let data: Vec<&String> = image.layers[1].keys().collect();
    assert_eq!(data, vec!["data/", "data/message.txt", "data/sub/", "data/sub/x"]);
    assert_eq!(image.layers[1]["data/message.txt"].1, "hello");
    assert!(image.layers[2].contains_key("app/hello.wasm"), "COPY to . lands in WORKDIR");
}

fn tar_with(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, kind, data, link) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(*kind);
        header.set_mode(if kind.is_dir() { 0o750 } else { 0o640 });
        header.set_size(data.len() as u64);
        // Written raw: tar's own path setters refuse "..".
        header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(link) = link {
            header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_cksum();
        builder.append(&header, *data).unwrap();
    }
    builder.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

fn xz(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 6);
    xz.write_all(data).unwrap();
    xz.finish().unwrap()
}

#[tokio::test]
async fn add_extracts_plain_gzip_xz_and_zstd_tars() {
    let temp = tempfile::tempdir().unwrap();
    let ctx = temp.path().join("ctx");
    let tar = tar_with(&[
        ("./", tar::EntryType::Directory, b"", None),
        ("d/", tar::EntryType::Directory, b"", None),
        ("d/f", tar::EntryType::Regular, b"content", None),
        ("d/hard", tar::EntryType::Link, b"", Some("d/f")),
        ("d/up", tar::EntryType::Symlink, b"", Some("../d/f")),
    ]);
    write(&ctx, "plain.tar", &tar);
    write(&ctx, "packed.tgz", &gzip(&tar));
    write(&ctx, "notes.gz", &gzip(b"not a tar"));
    write(&ctx, "packed.txz", &xz(&tar));
    write(&ctx, "packed.tar.zst", &zstd::encode_all(&tar[..], 3).unwrap());
    write(
        &ctx,
        "Dockerfile",
        b"FROM scratch\nADD plain.tar /opt/\nADD packed.tgz /srv\nADD notes.gz /notes.gz\nCOPY plain.tar /copied.tar\n\
          ADD packed.txz /xz\nADD packed.tar.zst /zst\n",
    );
    let (_, out) = build_context(&ctx).await.unwrap();
    let image = read_archive(&out);
    let opt = &image.layers[0];
    assert_eq!(opt["opt/d/f"], (0o640, "content".to_string()));
    assert_eq!(opt["opt/d/"].0, 0o750);
    assert_eq!(opt["opt/d/hard"], (0o640, "content".to_string()), "hard link copied as a file");
    assert_eq!(opt["opt/d/up"].1, "-> ../d/f");
    assert_eq!(image.layers[1]["srv/d/f"].1, "content");
    assert!(image.layers[2].contains_key("notes.gz"), "a gzip that is no tar is copied");
    assert!(image.layers[3].contains_key("copied.tar"), "COPY never extracts");
    assert_eq!(image.layers[4]["xz/d/f"].1, "content", "xz");
    assert_eq!(image.layers[4]["xz/d/up"].1, "-> ../d/f");
    assert_eq!(image.layers[5]["zst/d/f"].1, "content", "zstd");
}

async fn add_error(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)], dest: &str) -> String {
    let temp = tempfile::tempdir().unwrap();
    let ctx = temp.path().join("ctx");
    write(&ctx, "x.tar", &tar_with(entries));
    write(&ctx, "Dockerfile", format!("FROM scratch\n\nADD x.tar {dest}\n").as_bytes());
    chain(&build_context(&ctx).await.unwrap_err())
}

/// An error with its sources, as `hybrid build` prints it.
pub(crate) fn chain(err: &BuildError) -> String {
    let mut message = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        message.push_str(&format!(": {s}"));
        source = s.source();
    }
    message
}

#[tokio::test]
async fn add_refuses_a_dotdot_entry() {
    let msg = add_error(&[("../x", tar::EntryType::Regular, b"evil", None)], "/").await;
    assert!(msg.contains("Dockerfile:3:1: ADD x.tar /"), "{msg}");
    assert!(msg.contains("entry \"../x\" has a \"..\" component"), "{msg}");
    let msg = add_error(&[("a/../../x", tar::EntryType::Regular, b"evil", None)], "/opt/").await;
    assert!(msg.contains("entry \"a/../../x\" has a \"..\" component"), "{msg}");
}

#[tokio::test]
async fn add_refuses_an_absolute_entry() {
    let msg = add_error(&[("/etc/passwd", tar::EntryType::Regular, b"evil", None)], "/").await;
    assert!(msg.contains("entry \"/etc/passwd\" has an absolute path"), "{msg}");
}

#[tokio::test]
async fn add_refuses_a_symlink_leading_out() {
    use tar::EntryType::*;
    let msg = add_error(&[("link", Symlink, b"", Some("/etc")), ("link/passwd", Regular, b"x", None)], "/opt/").await;
    assert!(msg.contains("entry \"link\" is a symlink to \"/etc\", outside the destination"), "{msg}");
    let msg = add_error(&[("link", Symlink, b"", Some("../../etc"))], "/opt/").await;
    assert!(msg.contains("entry \"link\" is a symlink to \"../../etc\", outside the destination"), "{msg}");
    // An entry below a symlink that stays inside is not written through it.
    let msg = add_error(&[("link", Symlink, b"", Some("sub")), ("link/f", Regular, b"x", None)], "/").await;
    assert!(msg.contains("/link is not a directory"), "{msg}");
}

#[tokio::test]
async fn add_refuses_a_hard_link_leading_out() {
    let msg = add_error(&[("h", tar::EntryType::Link, b"", Some("../etc/passwd"))], "/").await;
    assert!(msg.contains("entry \"h\" is a hard link to \"../etc/passwd\", outside the archive's files"), "{msg}");
    let msg = add_error(&[("h", tar::EntryType::Link, b"", Some("/etc/shadow"))], "/").await;
    assert!(msg.contains("entry \"h\" is a hard link"), "{msg}");
}

#[tokio::test]
async fn add_refuses_a_device_node() {
    let msg = add_error(&[("null", tar::EntryType::Char, b"", None)], "/").await;
    assert!(msg.contains("entry \"null\" is a device node"), "{msg}");
    let msg = add_error(&[("sda", tar::EntryType::Block, b"", None)], "/").await;
    assert!(msg.contains("entry \"sda\" is a device node"), "{msg}");
}

#[tokio::test]
async fn add_refuses_an_oversize_header() {
    use tar::EntryType::*;
    let huge = vec![b'a'; 2 << 20];
    let msg = add_error(&[("././@LongLink", GNULongName, &huge, None), ("x", Regular, b"x", None)], "/").await;
    assert!(msg.contains("entry \"#1 (GNULongName header)\" is 2097152 bytes, over the limit of 1048576 for a header"), "{msg}");
    let long = vec![b'a'; 5000];
    let msg = add_error(&[("././@LongLink", GNULongName, &long, None), ("x", Regular, b"x", None)], "/").await;
    assert!(msg.contains("has a path of 5000 bytes, over the limit of 4096"), "{msg}");
}

#[tokio::test]
async fn errors_name_the_dockerfile_line_and_the_thing_at_fault() {
    let temp = tempfile::tempdir().unwrap();
    let ctx = temp.path().join("ctx");
    write(&ctx, "Dockerfile", b"FROM scratch\nCOPY a b\nFOO bar\n");
    let err = build_context(&ctx).await.unwrap_err().to_string();
    assert!(err.ends_with("Dockerfile:3:1: unknown instruction \"FOO\""), "{err}");

    write(&ctx, "Dockerfile", b"FROM scratch\nCOPY missing /x\n");
    let err = build_context(&ctx).await.unwrap_err();
    assert!(err.to_string().ends_with("Dockerfile:2:1: COPY missing /x"), "{err}");
    assert_eq!(std::error::Error::source(&err).unwrap().to_string(), "\"missing\" not found in the build context");

    write(&ctx, "Dockerfile", b"FROM scratch\nCOPY ../etc /x\n");
    let err = build_context(&ctx).await.unwrap_err();
    assert!(std::error::Error::source(&err).unwrap().to_string().contains("outside the build context"));

    write(&ctx, "a", b"a");
    write(&ctx, "b", b"b");
    write(&ctx, "Dockerfile", b"FROM scratch\nCOPY a b /x\n");
    let err = build_context(&ctx).await.unwrap_err();
    assert!(std::error::Error::source(&err).unwrap().to_string().contains("must be a directory"));
}

#[tokio::test]
async fn from_oci_archive_keeps_the_base() {
    let temp = tempfile::tempdir().unwrap();
    let base = temp.path().join("base");
    write(&base, "Dockerfile", b"FROM scratch\nCOPY bin /usr/local/bin/\nENV BASE=1\nCMD [\"sh\"]\n");
    write(&base, "bin/tool", b"tool");
    let (base_info, base_tar) = build_context(&base).await.unwrap();

    let app = temp.path().join("app");
    write(&app, "Dockerfile", b"FROM oci-archive:../base.tar\nCOPY app /usr/local/bin\nENTRYPOINT [\"app\"]\n");
    write(&app, "app", b"app");
    let _ = base_tar;
    let (info, out) = build_context(&app).await.unwrap();
    assert_ne!(info.digest, base_info.digest);
    let image = read_archive(&out);
    assert_eq!(image.layers.len(), 2);
    assert!(image.layers[1].contains_key("usr/local/bin/app"), "{:?}", image.layers[1]);
    assert!(!image.layers[1].contains_key("usr/"), "no parent dirs over a base image");
    let config = image.config.config().clone().unwrap();
    assert!(config.env().clone().unwrap().contains(&"BASE=1".to_string()));
    assert_eq!(config.cmd(), &None, "ENTRYPOINT resets an inherited CMD");
    assert_eq!(image.config.history().as_ref().unwrap().len(), 5);
}

#[tokio::test]
async fn from_oci_layout_dir_keeps_the_base_and_checks_its_blobs() {
    let temp = tempfile::tempdir().unwrap();
    let base = temp.path().join("base");
    write(&base, "Dockerfile", b"FROM scratch\nCOPY bin /usr/local/bin/\nENV BASE=1\n");
    write(&base, "bin/tool", b"tool");
    let (_, base_tar) = build_context(&base).await.unwrap();
    let layout = temp.path().join("layout");
    tar::Archive::new(std::fs::File::open(&base_tar).unwrap()).unpack(&layout).unwrap();

    let app = temp.path().join("app");
    write(&app, "Dockerfile", b"FROM oci-layout:../layout\nCOPY app /usr/local/bin/\n");
    write(&app, "app", b"app");
    let (_, out) = build_context(&app).await.unwrap();
    let image = read_archive(&out);
    assert_eq!(image.layers[0]["usr/local/bin/tool"].1, "tool");
    assert_eq!(image.layers[1]["usr/local/bin/app"].1, "app");
    assert!(image.config.config().clone().unwrap().env().clone().unwrap().contains(&"BASE=1".to_string()));

    // A blob whose content does not match its name is refused.
    let json = |digest: &str| -> serde_json::Value {
        let path = layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    };
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest = json(index["manifests"][0]["digest"].as_str().unwrap());
    let layer = manifest["layers"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
    let blob = layout.join("blobs/sha256").join(layer);
    std::fs::write(&blob, b"tampered").unwrap();
    let err = build_context(&app).await.unwrap_err();
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert!(source.contains("does not match its digest"), "{source}");

    write(&app, "Dockerfile", b"FROM oci-layout:../missing\n");
    let err = build_context(&app).await.unwrap_err();
    assert_eq!(std::error::Error::source(&err).unwrap().to_string(), "base image OCI layout ../missing not found");
    std::fs::remove_file(layout.join("oci-layout")).unwrap();
    write(&app, "Dockerfile", b"FROM oci-layout:../layout\n");
    let err = build_context(&app).await.unwrap_err();
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert!(source.contains("layout: no oci-layout file"), "{source}");
}

#[tokio::test]
async fn platform_sets_the_config_and_selects_the_base() {
    let temp = tempfile::tempdir().unwrap();
    let base = temp.path().join("base");
    write(&base, "Dockerfile", b"FROM scratch\nCOPY a /a\n");
    write(&base, "a", b"a");
    let out = archive_path(&base);
    let mut opts = options(&base, &out);
    opts.platform = Platform::parse("linux/arm/v7").unwrap();
    build(&opts).await.unwrap();
    let image = read_archive(&out);
    assert_eq!((image.config.os().to_string(), image.config.architecture().to_string()), ("linux".into(), "arm".into()));
    assert_eq!(image.config.variant().as_deref(), Some("v7"));
    let blobs = BlobStore::temp().unwrap();
    let index = archive::read(&out, &blobs).unwrap();
    let entry = index.manifests()[0].platform().clone().unwrap();
    assert_eq!(entry.variant().as_deref(), Some("v7"));

    // FROM --platform picks the base's platform (ARGs expand in it); RUN
    // on a foreign platform needs an emulator.
    let app = temp.path().join("app");
    write(&app, "Dockerfile", b"ARG P=linux/arm/v7\nFROM --platform=$P oci-archive:../base.tar\nCOPY b /b\n");
    write(&app, "b", b"b");
    let (_, out) = build_context(&app).await.unwrap();
    let image = read_archive(&out);
    assert_eq!(image.config.architecture().to_string(), "arm");
    assert_eq!(image.layers.len(), 2);

    write(&app, "Dockerfile", b"FROM oci-archive:../base.tar\n");
    let err = build_context(&app).await.unwrap_err();
    let source = std::error::Error::source(&err).unwrap().to_string();
    let host = Platform::host();
    assert!(source.starts_with("OCI archive "), "{source}");
    assert!(source.ends_with(&format!("base.tar has no manifest for platform {host}")), "{source}");

    write(&app, "Dockerfile", b"FROM --platform=linux/arm/v7 scratch\nRUN true\n");
    let err = build_context(&app).await.unwrap_err();
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert_eq!(source, "RUN on platform linux/arm/v7 needs an emulator, not supported");

    write(&app, "Dockerfile", b"FROM --platform=wasip1/wasm scratch\nARG TARGETPLATFORM\nENV T=$TARGETPLATFORM\n");
    let (_, out) = build_context(&app).await.unwrap();
    let image = read_archive(&out);
    assert_eq!((image.config.os().to_string(), image.config.architecture().to_string()), ("wasip1".into(), "wasm".into()));
    assert!(image.config.config().clone().unwrap().env().clone().unwrap().contains(&format!("T={host}")));

    write(&app, "Dockerfile", b"FROM --platform=linux scratch\n");
    let err = build_context(&app).await.unwrap_err();
    assert!(std::error::Error::source(&err).unwrap().to_string().starts_with("FROM --platform: invalid platform \"linux\""));
}

#[tokio::test]
async fn load_needs_a_name_and_containerd() {
    let temp = tempfile::tempdir().unwrap();
    let ctx = temp.path().join("ctx");
    write(&ctx, "Dockerfile", b"FROM scratch\nCMD [\"x\"]\n");
    let (_, out) = build_context(&ctx).await.unwrap();
    let options = ContainerdOptions { address: temp.path().join("no.sock"), namespace: "default".into() };
    let err = load(&out, None, &options).await.unwrap_err();
    assert!(err.to_string().starts_with("cannot connect to containerd at "), "{err}");
}

#[path = "tests_stages.rs"]
mod stages;

#[path = "tests_add_url.rs"]
mod add_url;
