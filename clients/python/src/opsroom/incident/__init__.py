"""Generated from the opsroom .proto files; do not edit."""
