"""Embedded servers: a real PostgreSQL and a real nats-server started as children of xbusd
when no external URL is configured."""
