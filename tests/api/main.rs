//! Integration tests: each starts the real server from the library on a
//! free port and talks to it with a real WebSocket or HTTP client.

mod helpers;
mod redis_server;

mod cluster;
mod cluster_process;
mod frames;
mod hostile;
mod http_api;
mod lifecycle;
mod ops;
mod privacy;
mod process;
mod tokens;
