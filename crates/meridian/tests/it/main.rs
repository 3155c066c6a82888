//! Black-box tests: the real `meridian` binary as a child process, over real HTTP, on SQLite
//! and on PostgreSQL.

mod cli;
mod crash;
mod events;
mod race;
mod support;
