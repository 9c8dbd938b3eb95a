"""The evaluation commands: parse, resolve the configuration, call a protocol, print."""
