"""A randomized campaign checker: seeded schedules of faults and stops against the real CLI.

schedule.py    a seed -> a campaign, a provider API, faults, stops (pure)
invariants.py  what was observed -> violations (pure)
driver.py      runs a schedule: the simulator in-process, `sms-blaster send` as processes
__main__.py    `python -m tests.soak`: many seeds and a table, or one seed replayed

distributed_schedule.py    a seed -> the same campaign and faults, enqueued, sent by rounds of
                           workers with a stop a round (pure)
distributed_invariants.py  what enqueue, the workers, Redis and the simulator showed -> violations
distributed_driver.py      runs one: the simulator in-process, a restartable redis-server, the CLI
"""
