"""The recording of a call: its versioned JSONL format, reading, export and redaction."""
