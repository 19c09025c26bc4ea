//! The `volley` server binary.
fn main() {
    eprintln!("volley: the server runtime is not built yet; the protocol core is in volley::proto");
    std::process::exit(2);
}
