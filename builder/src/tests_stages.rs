//! End-to-end tests of ARG, heredocs, stages, COPY flags, .dockerignore,
//! docker-only config fields, the build cache and layer compression.

use std::path::Path;

use super::{archive_path, chain, options, read_archive, write};
use crate::*;

async fn build_with(context: &Path, adjust: impl FnOnce(&mut BuildOptions)) -> Result<ImageInfo, BuildError> {
    let mut opts = options(context, &archive_path(context));
    adjust(&mut opts);
    build(&opts).await
}

#[tokio::test]
async fn args_substitution_and_heredocs() {
    let temp = tempfile::tempdir().unwrap();
    let ctx = temp.path().join("ctx");
    write(
        &ctx,
        "Dockerfile",
        b"ARG BASE=scratch\nARG VERSION=1\nFROM ${BASE}\nARG VERSION\nARG MODE=${FLAVOR:-plain}\nENV V=$VERSION \
          M=${MODE} ALT=${VERSION:+set} NONE=${UNSET:+x}\nCOPY <<EOF <<'RAW' /etc/\nversion $VERSION\nEOF\n$VERSION\nRAW\n\
          COPY <<EOF /motd\nhi\nEOF\n",
    );
    build_with(&ctx, |o| o.build_args = vec![("VERSION".into(), "2".into())]).await.unwrap();
    let image = read_archive(&archive_path(&ctx));
    let env = image.config.config().clone().unwrap().env().clone().unwrap();
    for want in ["V=2", "M=plain", "ALT=set", "NONE="] {
        assert!(env.contains(&want.to_string()), "{want} in {env:?}");
    }
    assert!(!env.iter().any(|e| e.starts_with("VERSION=")), "ARGs are not stored in the image");
    assert_eq!(image.layers[0]["etc/EOF"], (0o644, "version 2\n".to_string()));
    assert_eq!(image.layers[0]["etc/RAW"].1, "$VERSION\n", "quoted marker: no expansion");
    assert_eq!(image.layers[1]["motd"].1, "hi\n", "a heredoc copied to a file path");

    write(&ctx, "Dockerfile", b"FROM scratch\nCOPY \\\n  nothing-here /x\n");
    let err = build_with(&ctx, |_| {}).await.unwrap_err();
    assert!(err.to_string().ends_with("Dockerfile:2:1: COPY nothing-here /x"), "{err}");
}

#[tokio::test]
async fn multi_stage_copy_from_and_target() {
    let temp = tempfile::tempdir().unwrap();
    let ctx = temp.path().join("ctx");
    write(&ctx, "app.wasm", b"\0asm");
    write(&ctx, "lib/x.so", b"so");
    write(
        &ctx,
        "Dockerfile",
        b"FROM scratch AS build\nCOPY app.wasm /out/app.wasm\nCOPY lib /out/lib\nENV IN_BUILD=1\n\
          FROM build AS more\nCOPY app.wasm /out/again.wasm\n\
          FROM scratch\nCOPY --from=build /out/app.wasm /app/\nCOPY --from=0 /out/lib /lib\nCOPY --from=more /out/again.wasm /\n",
    );
    let info = build_with(&ctx, |_| {}).await.unwrap();
    assert_eq!(info.steps.len(), 6);
    let image = read_archive(&archive_path(&ctx));
    assert_eq!(image.layers.len(), 3, "only the last stage is the image");
    assert_eq!(image.layers[0]["app/app.wasm"].1, "\0asm");
    assert_eq!(image.layers[1]["lib/x.so"].1, "so");
    assert!(image.layers[2].contains_key("again.wasm"));
    let env = image.config.config().clone().unwrap().env().clone().unwrap();
    assert!(!env.iter().any(|e| e.starts_with("IN_BUILD")));

    let info = build_with(&ctx, |o| o.target = Some("MORE".into())).await.unwrap();
    assert_eq!(info.steps.len(), 3, "stops after the target stage");
    let image = read_archive(&archive_path(&ctx));
    assert_eq!(image.layers.len(), 3, "FROM an earlier stage keeps its layers");
    assert!(image.config.config().clone().unwrap().env().clone().unwrap().contains(&"IN_BUILD=1".to_string()));

    // Stages the output does not need are not built (this one could not be).
    write(
        &ctx,
        "Dockerfile",
        b"FROM scratch AS build\nCOPY app.wasm /a\nFROM oci-archive:missing.tar AS unused\nCOPY nothing /\n\
          FROM scratch AS other\nCOPY --from=build /a /b\n",
    );
    let info = build_with(&ctx, |_| {}).await.unwrap();
    assert_eq!(info.steps.len(), 2);
    let err = build_with(&ctx, |o| o.target = Some("unused".into())).await.unwrap_err();
    assert!(chain(&err).contains("base image OCI archive missing.tar not found"), "{}", chain(&err));

    let err = build_with(&ctx, |o| o.target = Some("nope".into())).await.unwrap_err();
    assert_eq!(err.to_string(), "target stage \"nope\" not found in the Dockerfile");
    write(&ctx, "Dockerfile", b"FROM scratch AS a\nCOPY --from=a app.wasm /\n");
    let err = build_with(&ctx, |_| {}).await.unwrap_err();
    assert!(chain(&err).contains("Dockerfile:2:1: COPY --from=a app.wasm /: COPY --from=a: a stage cannot copy from itself"), "{}", chain(&err));
}

#[tokio::test]
async fn chown_chmod_globs_and_dockerignore() {
    let temp = tempfile::tempdir().unwrap();
    let ctx = temp.path().join("ctx");
    write(&ctx, "passwd", b"root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n");
    write(&ctx, "group", b"root:x:0:\nstaff:x:50:app\n");
    write(&ctx, "a.wasm", b"a");
    write(&ctx, "b.wasm", b"b");
    write(&ctx, "secret.wasm", b"s");
    write(&ctx, "docs/keep.md", b"k");
    write(&ctx, "docs/drop.md", b"d");
    write(&ctx, ".dockerignore", b"secret.*\ndocs\n!docs/keep.md\n");
    write(
        &ctx,
        "Dockerfile",
        b"FROM scratch\nCOPY passwd group /etc/\nCOPY --chown=app:staff --chmod=0750 *.wasm /app/\n\
          COPY --chown=7 docs /docs\nCOPY --chown=app . /all/\n",
    );
    build_with(&ctx, |_| {}).await.unwrap();
    let image = read_archive(&archive_path(&ctx));
    let apps: Vec<&String> = image.layers[1].keys().collect();
    assert_eq!(apps, vec!["app/", "app/a.wasm", "app/b.wasm"], "globs, minus .dockerignore");
    assert_eq!(image.layers[1]["app/a.wasm"].0, 0o750);
    assert_eq!(image.owners[1]["app/a.wasm"], (1000, 50));
    assert_eq!(image.owners[1]["app/"], (0, 0), "parent directories stay root's");
    assert_eq!(image.owners[2]["docs/keep.md"], (7, 7));
    assert!(!image.layers[2].contains_key("docs/drop.md"), "{:?}", image.layers[2]);
    assert!(!image.layers[3].contains_key("all/secret.wasm"));
    assert_eq!(image.owners[3]["all/a.wasm"], (1000, 1001), "a user alone: their primary group");

    write(&ctx, "Dockerfile", b"FROM scratch\nCOPY --chown=app a.wasm /\n");
    let err = build_with(&ctx, |_| {}).await.unwrap_err();
    assert!(chain(&err).ends_with("--chown: user \"app\" needs /etc/passwd in the image, which it does not have"), "{}", chain(&err));
    write(&ctx, "Dockerfile", b"FROM scratch\nUSER nobody\nCOPY passwd group /etc/\nUSER app:staff\nUSER 5:6\nUSER bob\n");
    let err = build_with(&ctx, |_| {}).await.unwrap_err();
    assert!(chain(&err).ends_with("Dockerfile:6:1: USER bob: no user \"bob\" in the image's /etc/passwd"), "{}", chain(&err));
    write(&ctx, "Dockerfile", b"FROM scratch\nCOPY passwd group /etc/\nUSER app:wheel\n");
    let err = build_with(&ctx, |_| {}).await.unwrap_err();
    assert!(chain(&err).ends_with("no group \"wheel\" in the image's /etc/group"), "{}", chain(&err));
    write(&ctx, "Dockerfile", b"FROM scratch\nCOPY secret.wasm /\n");
    let err = build_with(&ctx, |_| {}).await.unwrap_err();
    assert!(chain(&err).contains("\"secret.wasm\" not found in the build context"), "{}", chain(&err));
}

#[tokio::test]
async fn docker_config_fields_and_onbuild_triggers() {
    let temp = tempfile::tempdir().unwrap();
    let base = temp.path().join("base");
    write(&base, "f", b"f");
    write(
        &base,
        "Dockerfile",
        b"FROM scratch\nSHELL [\"/bin/ash\", \"-e\", \"-c\"]\nCMD run me\nSTOPSIGNAL SIGINT\nUSER 1000:1000\n\
          HEALTHCHECK --interval=30s --timeout=3s --retries=2 CMD [\"/probe\", \"-q\"]\nONBUILD COPY f /from-trigger\n",
    );
    build_with(&base, |_| {}).await.unwrap();
    let image = read_archive(&archive_path(&base));
    let config = &image.raw_config["config"];
    assert_eq!(config["Shell"], serde_json::json!(["/bin/ash", "-e", "-c"]));
    assert_eq!(config["Cmd"], serde_json::json!(["/bin/ash", "-e", "-c", "run me"]));
    assert_eq!(config["StopSignal"], "SIGINT");
    assert_eq!(config["User"], "1000:1000");
    assert_eq!(
        config["Healthcheck"],
        serde_json::json!({"Test": ["CMD", "/probe", "-q"], "Interval": 30_000_000_000u64, "Timeout": 3_000_000_000u64, "Retries": 2})
    );
    assert_eq!(config["OnBuild"], serde_json::json!(["COPY f /from-trigger"]));

    let child = temp.path().join("child");
    write(&child, "f", b"child f");
    write(&child, "Dockerfile", b"FROM oci-archive:../base.tar\nHEALTHCHECK NONE\n");
    build_with(&child, |_| {}).await.unwrap();
    let image = read_archive(&archive_path(&child));
    let config = &image.raw_config["config"];
    assert_eq!(image.layers.len(), 1);
    assert_eq!(image.layers[0]["from-trigger"].1, "child f", "the trigger ran in the child build");
    assert!(config.get("OnBuild").is_none(), "triggers are not inherited: {config}");
    assert_eq!(config["Shell"], serde_json::json!(["/bin/ash", "-e", "-c"]), "SHELL is inherited");
    assert_eq!(config["Healthcheck"], serde_json::json!({"Test": ["NONE"]}));

    write(&child, "Dockerfile", b"FROM scratch\nMAINTAINER me\n");
    let err = build_with(&child, |_| {}).await.unwrap_err();
    assert!(err.to_string().ends_with("Dockerfile:2:1: MAINTAINER is not supported yet"), "{err}");
}

#[tokio::test]
async fn cache_reuses_unchanged_steps() {
    let temp = tempfile::tempdir().unwrap();
    let ctx = temp.path().join("ctx");
    let cache = temp.path().join("cache");
    write(&ctx, "one", b"1");
    write(&ctx, "two", b"2");
    write(&ctx, "three", b"3");
    write(&ctx, "Dockerfile", b"FROM scratch\nCOPY one /\nENV X=1\nCOPY two /\nCOPY three /\n");
    let with_cache = |o: &mut BuildOptions| o.cache_dir = Some(cache.clone());
    let first = build_with(&ctx, with_cache).await.unwrap();
    assert!(first.steps.iter().all(|s| !s.cached));
    let second = build_with(&ctx, with_cache).await.unwrap();
    assert_eq!(second.steps.len(), 3);
    assert!(second.steps.iter().all(|s| s.cached), "{:?}", second.steps);
    assert_eq!(second.digest, first.digest);

    write(&ctx, "two", b"changed");
    let third = build_with(&ctx, with_cache).await.unwrap();
    let cached: Vec<bool> = third.steps.iter().map(|s| s.cached).collect();
    assert_eq!(cached, vec![true, false, false], "rebuilt from the changed step on");
    assert_ne!(third.digest, first.digest);
    assert_eq!(third.steps[2].layer, first.steps[2].layer, "same content, same layer bytes");

    let fresh = build_with(&ctx, |o| o.cache_dir = None).await.unwrap();
    assert!(fresh.steps.iter().all(|s| !s.cached), "no cache: nothing cached");
    assert_eq!(fresh.digest, third.digest);
    let zstd = build_with(&ctx, |o| {
        o.cache_dir = Some(cache.clone());
        o.compression = Compression::Zstd;
    })
    .await
    .unwrap();
    assert!(zstd.steps.iter().all(|s| !s.cached), "the compression is part of the key");
}

#[tokio::test]
async fn compression_and_oci_layout() {
    let temp = tempfile::tempdir().unwrap();
    let ctx = temp.path().join("ctx");
    write(&ctx, "f", b"data");
    write(&ctx, "Dockerfile", b"FROM scratch\nCOPY f /f\n");
    for (compression, media_type) in [
        (Compression::Zstd, "application/vnd.oci.image.layer.v1.tar+zstd"),
        (Compression::None, "application/vnd.oci.image.layer.v1.tar"),
        (Compression::Gzip, "application/vnd.oci.image.layer.v1.tar+gzip"),
    ] {
        let layout = temp.path().join(format!("layout-{compression}"));
        let info = build_with(&ctx, |o| {
            o.compression = compression;
            o.output_layout = Some(layout.clone());
            o.source_date_epoch = 1_700_000_000;
        })
        .await
        .unwrap();
        let image = read_archive(&archive_path(&ctx));
        assert_eq!(image.manifest.layers()[0].media_type().to_string(), media_type);
        assert_eq!(image.layers[0]["f"].1, "data");
        assert_eq!(image.config.rootfs().diff_ids(), &image.diff_ids);
        let index: serde_json::Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        assert_eq!(index["manifests"][0]["digest"], info.digest.as_str());
        assert!(layout.join("oci-layout").is_file());
        let hex = info.digest.trim_start_matches("sha256:");
        let blob = layout.join("blobs/sha256").join(hex);
        assert!(blob.is_file());
        let mtime = std::fs::metadata(&blob).unwrap().modified().unwrap();
        assert_eq!(mtime, std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000), "SOURCE_DATE_EPOCH");
    }
}

#[tokio::test]
async fn copy_from_an_image_resolves_symlinks_in_its_rootfs() {
    let temp = tempfile::tempdir().unwrap();
    let base = temp.path().join("base");
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Symlink);
    header.set_size(0);
    header.set_mode(0o777);
    tar.append_link(&mut header, "bin", "/usr/bin").unwrap();
    write(&base, "root.tar", &tar.into_inner().unwrap());
    write(&base, "tool", b"tool");
    write(&base, "Dockerfile", b"FROM scratch\nCOPY tool /usr/bin/tool\nADD --chown=3:4 root.tar /\n");
    build_with(&base, |_| {}).await.unwrap();
    let image = read_archive(&archive_path(&base));
    assert_eq!(image.owners[1]["bin"], (3, 4), "ADD --chown applies to extracted entries");

    let app = temp.path().join("app");
    write(&app, "Dockerfile", b"FROM scratch\nCOPY --from=oci-archive:../base.tar /bin/tool /app/tool\n");
    build_with(&app, |_| {}).await.unwrap();
    let image = read_archive(&archive_path(&app));
    assert_eq!(image.layers[0]["app/tool"].1, "tool", "/bin -> /usr/bin resolved inside the image");
}
