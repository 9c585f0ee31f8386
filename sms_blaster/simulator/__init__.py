"""The built-in provider simulator: a local server that answers like the Vonage SMS API."""

from sms_blaster.simulator.callbacks import CallbackFormat
from sms_blaster.simulator.provider import (
    RESET_PATH,
    SMS_PATH,
    STATS_PATH,
    RunningSimulator,
    SimulatorConfig,
    create_app,
    serve,
    start_simulator,
)

__all__ = [
    "RESET_PATH",
    "SMS_PATH",
    "STATS_PATH",
    "CallbackFormat",
    "RunningSimulator",
    "SimulatorConfig",
    "create_app",
    "serve",
    "start_simulator",
]
