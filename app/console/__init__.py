"""The web console at /console: server-rendered pages (Jinja2 + htmx) over the same services
and access rules as the HTTP API, signed in with an API key into a server-side session."""
