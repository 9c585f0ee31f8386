"""The opt-out list: numbers that asked for no more messages (STOP), kept by the receiver and
consulted by every send. `model` (the values and the rule), `screen` (what a run checks), `files`
(CSV/JSONL in and out), `command` (`sms-blaster optouts`); the stores are the journal's
(`journal.optouts`) and Redis's (`distributed.optouts`)."""
