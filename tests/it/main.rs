//! Integration tests: one binary, real SQLite files, real daemon processes.

mod config;
mod daemon;
mod fixtures;
mod media;
mod retention;
mod store;
