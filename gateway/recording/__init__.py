"""Shadow recording: what each monitored generation under ``observe`` showed the monitors, written to a bounded
directory of JSONL segments for ``sinkwatch calibrate --from-traffic``."""
