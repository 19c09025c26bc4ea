//! Server-side handshake cost per request: scan, parse, validate, accept key.
//!
//! The request is what Chrome sends for `new WebSocket("wss://...")` (header set and order
//! of Chrome 131 on Windows, no cookies): 514 bytes. Figures are per
//! request (`Throughput::Elements(1)`). `full` is the whole server path up to the 101; the
//! other entries time one step each on the same bytes, to show where the time goes.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use volley::proto::handshake::{
    parse_request, AcceptKey, HeadScanner, DEFAULT_MAX_HEAD, EMPTY_HEADER, MAX_HEADERS,
};
use volley::proto::Status;

const CHROME_UPGRADE: &[u8] = b"GET /chat?room=lobby HTTP/1.1\r\n\
Host: ws.example.com\r\n\
Connection: Upgrade\r\n\
Pragma: no-cache\r\n\
Cache-Control: no-cache\r\n\
User-Agent: Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36\r\n\
Upgrade: websocket\r\n\
Origin: https://app.example.com\r\n\
Sec-WebSocket-Version: 13\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Accept-Language: en-US,en;q=0.9\r\n\
Sec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
\r\n";

/// The whole server path: find the end of the head, parse it, validate it, compute the
/// accept key. Returns the accept key so nothing can be optimised away.
fn full(buf: &[u8]) -> AcceptKey {
    let mut scanner = HeadScanner::new();
    let head_len = match scanner.find_end(buf, DEFAULT_MAX_HEAD) {
        Ok(Status::Complete(n)) => n,
        other => panic!("head not found: {other:?}"),
    };
    let mut headers = [EMPTY_HEADER; MAX_HEADERS];
    let req = parse_request(&buf[..head_len], &mut headers).expect("valid request");
    let key = req.validate().expect("valid upgrade");
    AcceptKey::from_key(key.as_bytes())
}

fn bench_handshake(c: &mut Criterion) {
    let buf = CHROME_UPGRADE;
    assert_eq!(
        buf.len(),
        514,
        "keep the module doc in step with the request"
    );
    // The accept value for this key, computed outside volley (SHA-1 + base64 of key + GUID).
    assert_eq!(full(buf).as_str(), "HSmrc0sMlYUkAGmm5OPpG2HaGWk=");

    let mut g = c.benchmark_group("handshake");
    g.throughput(Throughput::Elements(1));
    g.bench_function("full", |b| b.iter(|| full(black_box(buf))));
    g.bench_function("find_end", |b| {
        b.iter(|| HeadScanner::new().find_end(black_box(buf), DEFAULT_MAX_HEAD))
    });
    g.bench_function("parse_request", |b| {
        b.iter(|| {
            let mut headers = [EMPTY_HEADER; MAX_HEADERS];
            let req = parse_request(black_box(buf), &mut headers).expect("valid request");
            black_box(req.head_len)
        })
    });
    g.bench_function("parse_request+validate", |b| {
        b.iter(|| {
            let mut headers = [EMPTY_HEADER; MAX_HEADERS];
            let req = parse_request(black_box(buf), &mut headers).expect("valid request");
            black_box(req.validate().expect("valid upgrade").len())
        })
    });
    let key = b"x3JJHMbDL1EzLkh9GBhXDw==";
    g.bench_function("accept_key", |b| {
        b.iter(|| AcceptKey::from_key(black_box(key)))
    });
    g.finish();
}

criterion_group!(benches, bench_handshake);
criterion_main!(benches);
