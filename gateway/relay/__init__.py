"""Relay, then annotate: the monitored backends' requests and answers as the client and upstream sent them,
with the stability reports added and the gate's hold-back applied to every kind of delta."""
