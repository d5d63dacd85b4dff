"""The console's pages, a router per domain: each reads through the domain's service with
the signed-in account as the principal, so the API's rights hold here too."""

from app.console.routes import accounts, actors, auth, overview, pipelines, postmortems, processes

ROUTERS = [
    auth.router,
    overview.router,
    pipelines.router,
    processes.router,
    postmortems.router,
    actors.router,
    accounts.router,
]
