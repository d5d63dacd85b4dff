"""The bus core: director, envelope assembly, process state machine. It knows nothing of
HTTP or NATS: both front ends call it."""
