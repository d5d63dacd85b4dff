"""Storage: the few SQL statements of the bus's hot paths, written with asyncpg on the
connection of the caller's unit of work, and the caches of what rarely changes."""
