//! Integration tests: one binary, real SQLite files, real daemon processes.

mod camera_secrets;
mod cli_golden;
mod config;
mod config_doc;
mod daemon;
mod durability;
mod faults;
mod faults_media;
mod fixtures;
mod home_assistant;
mod http_limits;
mod lossfs;
mod maintenance;
mod media;
mod metadata_retention;
mod mqtt;
mod mqtt_faults;
mod perception;
mod power;
mod retention;
mod serial;
mod ship;
mod signed_commands;
mod store;
mod tidy;
mod zones;
