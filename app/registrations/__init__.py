"""Registration: an actor (or gateway) asks for an account with a CSR; an admin accepts or
rejects it; the signed certificate is then handed out (HTTP here, SvcRegistration on NATS)."""
