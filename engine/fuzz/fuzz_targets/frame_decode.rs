//! Raw bytes through `Decoder`, server and client roles.
//!
//! Byte 0 picks the read size for the server-role run, byte 1 for the client-role run,
//! byte 2 the limits (even: defaults; odd: small, so 1009 is reachable); the rest is the
//! stream. `drive_decoder` panics on any broken invariant (no progress, more than
//! 2 + 8 + 4 + 125 bytes kept between reads, an assembly buffer beyond twice the message
//! limit or twice the bytes received, an error whose close code may not go on the wire),
//! and the result must equal the naive `model_decode` of the whole stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use volley::proto::{Limits, Role};
use volley_tests::{cuts_every, drive_decoder, model_decode};

fuzz_target!(|data: &[u8]| {
    let Some((&[server_read, client_read, lim], wire)) = data.split_first_chunk::<3>() else {
        return;
    };
    let limits = if lim & 1 == 0 {
        Limits::default()
    } else {
        Limits {
            max_frame: (lim as usize >> 1) * 4,
            max_message: (lim as usize >> 1) * 8,
        }
    };
    for (role, read) in [(Role::Server, server_read), (Role::Client, client_read)] {
        let cuts = cuts_every(wire.len(), read as usize + 1);
        let (got, _) = drive_decoder(role, limits, wire, &cuts);
        assert_eq!(got, model_decode(role, limits, wire), "{role:?}");
    }
});
