"""Operator actions on processes in bulk: pause, resume, cancel, replay, export, purge,
postmortems, statistics and the supervision of polling actors."""
