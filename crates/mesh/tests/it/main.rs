//! Integration tests of the mesh: many nodes in one process over the in-memory transport and
//! over real QUIC on 127.0.0.1, plus the scale simulation.

mod kit;
mod mem_cluster;
mod quic_cluster;
mod simulation;
