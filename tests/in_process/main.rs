//! The in-process Rust tests, one binary (one link instead of four): the server over real TCP,
//! the group and transaction APIs at every advertised version, the S3 backend against s3s-fs.
//! Client compatibility is proven by the real clients in tests/integration/.

mod groups_wire;
mod s3_store;
mod server;
mod transactions_wire;
mod wire;
