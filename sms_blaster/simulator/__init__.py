"""The built-in provider simulator: a local server that answers like the Vonage SMS API, the Vonage
Messages API and Twilio, and calls back with each one's receipts."""

from sms_blaster.simulator.answers import Api
from sms_blaster.simulator.callbacks import CallbackFormat
from sms_blaster.simulator.messages_api import MESSAGES_PATH
from sms_blaster.simulator.provider import (
    CONFIG_PATH,
    RESET_PATH,
    SMS_PATH,
    STATS_PATH,
    TIMELINE_PATH,
    RunningSimulator,
    SimulatorConfig,
    ThrottleHint,
    create_app,
    serve,
    start_simulator,
)
from sms_blaster.simulator.twilio_api import TWILIO_PATH

__all__ = [
    "CONFIG_PATH",
    "MESSAGES_PATH",
    "RESET_PATH",
    "SMS_PATH",
    "STATS_PATH",
    "TIMELINE_PATH",
    "TWILIO_PATH",
    "Api",
    "CallbackFormat",
    "RunningSimulator",
    "SimulatorConfig",
    "ThrottleHint",
    "create_app",
    "serve",
    "start_simulator",
]
