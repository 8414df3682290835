//! ADD from http URLs, against a real HTTP server on loopback.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;

use super::{archive_path, chain, options, read_archive, write};
use crate::*;

/// Serve `routes` (path → body; anything else 404) on loopback until the
/// test ends; returns the base URL.
fn serve(routes: Vec<(&'static str, Vec<u8>)>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            let _ = reader.read_line(&mut request);
            // Skip the headers.
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
            let (status, body) = match routes.iter().find(|(p, _)| *p == path) {
                Some((_, body)) => ("200 OK", body.clone()),
                None => ("404 Not Found", b"no such file".to_vec()),
            };
            let head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    base
}

async fn build_url(ctx: &Path, dockerfile: &str) -> Result<ImageInfo, BuildError> {
    write(ctx, "Dockerfile", dockerfile.as_bytes());
    let mut opts = options(ctx, &archive_path(ctx));
    opts.cache_dir = Some(ctx.parent().unwrap().join("cache"));
    build(&opts).await
}

#[tokio::test]
async fn add_downloads_a_url_unextracted_with_mode_0600() {
    let tar = super::gzip(&super::tar_with(&[("f", tar::EntryType::Regular, b"x", None)]));
    let base = serve(vec![("/files/tool.tar.gz", tar.clone()), ("/files/notes.txt?v=2", b"notes".to_vec())]);
    let temp = tempfile::tempdir().unwrap();
    let ctx = temp.path().join("ctx");
    let dockerfile = format!("FROM scratch\nADD {base}/files/tool.tar.gz /dl/\nADD {base}/files/notes.txt?v=2 /notes\n");
    build_url(&ctx, &dockerfile).await.unwrap();
    let image = read_archive(&archive_path(&ctx));
    let (mode, _) = &image.layers[0]["dl/tool.tar.gz"];
    assert_eq!(*mode, 0o600, "downloads are 0600, as docker makes them");
    assert!(!image.layers[0].contains_key("dl/f"), "a downloaded archive is not extracted");
    assert_eq!(image.layers[1]["notes"], (0o600, "notes".to_string()));

    // Unchanged content on a rebuild: every layer from the cache.
    let again = build_url(&ctx, &dockerfile).await.unwrap();
    assert!(again.steps.iter().all(|s| s.cached), "{:?}", again.steps);
}

#[tokio::test]
async fn add_checks_a_url_against_its_checksum() {
    let base = serve(vec![("/tool", b"tool".to_vec())]);
    let temp = tempfile::tempdir().unwrap();
    let ctx = temp.path().join("ctx");
    let good = sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(b"tool"));
    let good = hex::encode(good);
    build_url(&ctx, &format!("FROM scratch\nADD --checksum=sha256:{good} {base}/tool /tool\n")).await.unwrap();
    let bad = "0".repeat(64);
    let err = build_url(&ctx, &format!("FROM scratch\nADD --checksum=sha256:{bad} {base}/tool /tool\n")).await.unwrap_err();
    let msg = chain(&err);
    assert!(msg.contains(&format!("{base}/tool does not match --checksum: want sha256:{bad}, got sha256:{good}")), "{msg}");
    let err = build_url(&ctx, "FROM scratch\nCOPY --checksum=sha256:00 a /a\n").await.unwrap_err();
    assert!(chain(&err).contains("--checksum"), "{}", chain(&err));
}

#[tokio::test]
async fn add_names_a_url_it_cannot_fetch() {
    let base = serve(vec![("/", b"index".to_vec())]);
    let temp = tempfile::tempdir().unwrap();
    let ctx = temp.path().join("ctx");
    let err = build_url(&ctx, &format!("FROM scratch\nADD {base}/missing.tar /x\n")).await.unwrap_err();
    let msg = chain(&err);
    assert!(msg.contains(&format!("Dockerfile:2:1: ADD {base}/missing.tar /x: cannot fetch {base}/missing.tar: ")), "{msg}");
    assert!(msg.contains("404"), "{msg}");

    // Nothing listens on this port any more.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let err = build_url(&ctx, &format!("FROM scratch\nADD http://{closed}/x /x\n")).await.unwrap_err();
    let msg = chain(&err);
    assert!(msg.contains(&format!("cannot fetch http://{closed}/x: ")), "{msg}");

    let err = build_url(&ctx, &format!("FROM scratch\nADD {base}/ /dir/\n")).await.unwrap_err();
    assert!(chain(&err).contains("the URL has no file name"), "{}", chain(&err));
    let err = build_url(&ctx, &format!("FROM scratch\nCOPY {base}/x /x\n")).await.unwrap_err();
    assert!(chain(&err).contains("COPY cannot take a URL source"), "{}", chain(&err));
}
