//! Integration tests: one binary, real SQLite files, real daemon processes.

mod config;
mod daemon;
mod durability;
mod fixtures;
mod media;
mod mqtt;
mod perception;
mod retention;
mod store;
mod zones;
