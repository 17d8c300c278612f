//! `eip-saga`: a saga participant (`--role inventory`, ...) or the saga monitor
//! (`--role monitor`). See the crate docs.

fn main() {}
