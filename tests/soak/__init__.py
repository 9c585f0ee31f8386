"""A randomized campaign checker: seeded schedules of faults and stops against the real CLI.

schedule.py    a seed -> a campaign, a provider API, faults, stops (pure)
invariants.py  what was observed -> violations (pure)
driver.py      runs a schedule: the simulator in-process, `sms-blaster send` as processes
__main__.py    `python -m tests.soak`: many seeds and a table, or one seed replayed
"""
