//! Test helpers: a fresh SQLite file or PostgreSQL schema per test, TestApp on a real port.
