//! Upload and Download.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use smolvm_proto::{FrameKind, Request, Response, CHUNK_SIZE};

use super::{assert_error, Host, Rng, TempDir};

fn upload(host: &mut Host, path: &str, mode: u32, create_dirs: bool, data: &[u8]) -> Response {
    host.request(&Request::Upload {
        path: path.into(),
        mode,
        create_dirs,
    });
    for chunk in data.chunks(CHUNK_SIZE) {
        host.send(FrameKind::Data, chunk);
    }
    host.send(FrameKind::DataEnd, b"");
    host.response()
}

/// Downloads `path`: (mode, content).
fn download(host: &mut Host, path: &str) -> Result<(u32, Vec<u8>), Response> {
    host.request(&Request::Download { path: path.into() });
    let (size, mode) = match host.response() {
        Response::DownloadStart { size, mode } => (size, mode),
        other => return Err(other),
    };
    let mut content = Vec::new();
    loop {
        let frame = host.recv().expect("download frames");
        match frame.kind {
            FrameKind::Data => {
                assert!(frame.payload.len() <= CHUNK_SIZE);
                content.extend_from_slice(&frame.payload);
            }
            FrameKind::DataEnd => break,
            other => panic!("unexpected {other:?} in a download"),
        }
    }
    assert_eq!(content.len() as u64, size);
    Ok((mode, content))
}

#[test]
fn upload_then_download_is_byte_identical_with_mode_kept() {
    let dir = TempDir::new("roundtrip");
    let path = dir.path("blob.bin");
    let path = path.to_str().expect("utf-8 path");
    let data = Rng::new().bytes(5 << 20);
    let mut host = Host::connect();

    assert_eq!(
        upload(&mut host, path, 0o100640, false, &data),
        Response::Uploaded {
            bytes: data.len() as u64
        }
    );
    assert!(fs::read(path).expect("on disk") == data);
    assert_eq!(fs::metadata(path).expect("meta").permissions().mode() & 0o7777, 0o640);
    assert_eq!(dir.entries(), vec!["blob.bin"], "no temp file left");

    let (mode, content) = download(&mut host, path).expect("download");
    assert_eq!(mode, 0o640);
    assert!(content == data, "downloaded bytes differ");

    // Replacing keeps working, and an empty file round-trips too.
    assert_eq!(
        upload(&mut host, path, 0o755, false, b""),
        Response::Uploaded { bytes: 0 }
    );
    assert_eq!(download(&mut host, path).expect("download"), (0o755, Vec::new()));
    host.finish().expect("clean end");
}

#[test]
fn upload_creates_parent_directories_on_request() {
    let dir = TempDir::new("mkdirs");
    let nested = dir.path("a/b/c.txt");
    let nested = nested.to_str().expect("utf-8 path");
    let mut host = Host::connect();
    assert_error(&upload(&mut host, nested, 0o644, false, b"x"), "not_found");
    assert_eq!(
        upload(&mut host, nested, 0o644, true, b"xyz"),
        Response::Uploaded { bytes: 3 }
    );
    assert_eq!(fs::read(nested).expect("on disk"), b"xyz");
    host.finish().expect("clean end");
}

#[test]
fn refused_upload_keeps_the_stream_in_sync() {
    let mut host = Host::connect();
    host.request(&Request::Upload {
        path: "relative/path".into(),
        mode: 0o644,
        create_dirs: false,
    });
    // The Error comes before any data is sent; the rest is ignored.
    assert_error(&host.response(), "bad_request");
    host.send(FrameKind::Data, b"ignored");
    host.send(FrameKind::DataEnd, b"");
    assert!(matches!(host.call(&Request::Health), Response::Health { .. }));
    host.finish().expect("clean end");
}

#[test]
fn interrupted_upload_leaves_nothing_behind() {
    let dir = TempDir::new("interrupted");
    let path = dir.path("partial");
    let mut host = Host::connect();
    host.request(&Request::Upload {
        path: path.to_str().expect("utf-8").into(),
        mode: 0o644,
        create_dirs: false,
    });
    host.send(FrameKind::Data, b"half of it");
    // A new request before DataEnd aborts the upload.
    host.request(&Request::Health);
    assert_error(&host.response(), "bad_request");
    assert!(matches!(host.response(), Response::Health { .. }));
    assert!(dir.entries().is_empty(), "{:?}", dir.entries());

    host.request(&Request::Upload {
        path: path.to_str().expect("utf-8").into(),
        mode: 0o644,
        create_dirs: false,
    });
    host.send(FrameKind::Data, b"half of it");
    host.finish().expect("clean end");
    assert!(dir.entries().is_empty(), "{:?}", dir.entries());
}

#[test]
fn download_refuses_missing_and_special_files() {
    let dir = TempDir::new("special");
    let mut host = Host::connect();
    let missing = dir.path("missing");
    assert_error(
        &download(&mut host, missing.to_str().expect("utf-8")).unwrap_err(),
        "not_found",
    );
    assert_error(
        &download(&mut host, dir.0.to_str().expect("utf-8")).unwrap_err(),
        "not_regular",
    );
    assert_error(&download(&mut host, "/dev/null").unwrap_err(), "not_regular");
    assert_error(&download(&mut host, "etc/passwd").unwrap_err(), "bad_request");
    assert!(matches!(host.call(&Request::Health), Response::Health { .. }));
    host.finish().expect("clean end");
}
