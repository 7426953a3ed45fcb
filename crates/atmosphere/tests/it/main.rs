//! End-to-end tests of the `atmosphere` binary: real node processes on 127.0.0.1 and in network
//! namespaces, driven through the CLI and the HTTP API.

mod agents;
mod auth;
mod cli;
mod dashboard;
mod demo;
mod docs;
mod faults;
mod hostile;
mod kit;
mod knowledge;
mod lan;
mod load;
mod matter;
mod packages;
mod processes;
mod tools;
mod vision;
mod zeroconf;
