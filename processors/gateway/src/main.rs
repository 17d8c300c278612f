//! The `gateway` binary: HTTP in, Confluent-framed Avro to Kafka out. See docs/gateway.md.

fn main() -> std::process::ExitCode {
    eip_gateway::main_entry()
}
